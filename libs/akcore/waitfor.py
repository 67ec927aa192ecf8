"""``asyncio.wait_for`` that never drops a cancellation, for the services on Python 3.11.

Python 3.11's ``wait_for`` returns the awaited result when the task waiting in it is
cancelled in the loop turn the result arrives, and the cancellation is lost (CPython issue
gh-86296; 3.12 rewrote ``wait_for`` on ``asyncio.timeout``). nats-py waits for every
request's answer that way, so a task cancelled as an answer came ran on as if it had not
been: a runner's heartbeats for a job whose attempt had ended went on for ever, and the
job was never delivered again; a loop of requests cancelled at shutdown would keep the
service from stopping. ``install`` puts 3.12's behaviour in its place (``asyncio.timeout``
exists in 3.11 and counts cancellations right), for everything the process runs, nats-py
included. Services install it as they import ``akcore.bus``; a handler's worker does not
import it, so users' code keeps its Python's own.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

_ORIGINAL = asyncio.wait_for


async def wait_for(fut: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` as in Python 3.12."""
    if timeout is not None and timeout <= 0:
        task = asyncio.ensure_future(fut)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait({task})  # (it may finish after all, cancel or not)
        try:
            return task.result()
        except asyncio.CancelledError as e:
            raise TimeoutError from e
    async with asyncio.timeout(timeout):
        return await fut


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Waits ``seconds``, or less once ``stop`` is set (a service's loop between its
    rounds); whether it is set."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
    return stop.is_set()


def install() -> None:
    """Makes ``asyncio.wait_for`` this one (on a Python before 3.12; later ones have it)."""
    if sys.version_info < (3, 12):
        asyncio.wait_for = wait_for  # type: ignore[assignment]


def installed() -> bool:
    return asyncio.wait_for is not _ORIGINAL or sys.version_info >= (3, 12)
