"""``akcore.waitfor``: the services' ``asyncio.wait_for`` never drops a cancellation."""

from __future__ import annotations

import asyncio
import sys

import pytest
from akcore import bus, waitfor


def test_the_services_use_it() -> None:
    assert bus is not None and waitfor.installed()  # (importing akcore.bus installs it)


async def _cancelled_as_the_answer_comes() -> bool:
    """A task waiting in ``asyncio.wait_for`` is cancelled in the turn its answer arrives
    (as nats-py's request, in a runner's heartbeats for a job whose attempt just ended):
    whether the task ended cancelled."""
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()

    async def request() -> str:
        waiting.set()
        return await asyncio.wait_for(answer, 5)

    async def heartbeats() -> None:
        while True:  # as Lease.keep: on until cancelled
            await request()
            await asyncio.sleep(0)

    task = asyncio.create_task(heartbeats())
    await waiting.wait()
    waiting.clear()
    answer.set_result("+OK")
    task.cancel()  # the same turn
    again = asyncio.create_task(waiting.wait())  # the next heartbeat, if any
    await asyncio.wait({task, again}, return_when=asyncio.FIRST_COMPLETED)
    again.cancel()
    if not task.done():  # it went on heartbeating
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    return task.cancelled()


async def test_a_cancel_as_the_answer_arrives_is_not_lost() -> None:
    assert await _cancelled_as_the_answer_comes()


async def test_a_timeout_still_times_out_and_cancels_what_it_waited_for() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(never, 0.01)
    assert never.cancelled()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(1), 0)
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    done.set_result(3)
    assert await asyncio.wait_for(done, 0) == 3
    assert await asyncio.wait_for(asyncio.sleep(0, "x"), None) == "x"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="fixed in Python 3.12")
async def test_the_original_loses_it_on_this_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """(What the module is for: Python 3.11's own drops that cancellation.)"""
    monkeypatch.setattr(asyncio, "wait_for", waitfor._ORIGINAL)
    assert not await _cancelled_as_the_answer_comes()
