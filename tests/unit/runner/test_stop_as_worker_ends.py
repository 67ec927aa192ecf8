"""A stop asked for as the session's worker ends (the memory watch saw the kernel stop
one of its processes, and the worker's close finished, in one turn of the loop): the
conversation leaves the end to the stop, and the stop writes it. Without it the attempt
ended, its job was acked, and the session stayed RUNNING for good."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import pytest
from ak_runner.sandbox import KERNEL_STOPPED
from ak_runner.session import SessionRun
from akcore.cgroups import Stops


class Probe(SessionRun):
    """A session run with only what ``_run_until_stopped`` touches; its conversation ends
    when the test says the worker's close is over."""

    def __init__(self) -> None:
        memory = types.SimpleNamespace(
            stops=lambda uid, reset=False: Stops(), unwatch=lambda uid: None, watch=lambda *a: None
        )
        self.host = types.SimpleNamespace(
            memory=memory, worker_limits=types.SimpleNamespace(memory_mb=256), session_timeout=0
        )
        self.lease = types.SimpleNamespace(lost=asyncio.Event(), taken=False)
        self._stop, self._park = asyncio.Event(), asyncio.Event()
        self._park_timer, self.wait = None, None
        self.stop_reason, self.ended = None, False
        self.ends: list[tuple[str, str]] = []
        self.closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.conversing = asyncio.Event()

    async def _converse(self, worker: Any, code_dir: Path) -> None:
        # As the real one once its worker is gone: it waits for the close, then leaves the
        # end to a stop that came meanwhile.
        self.conversing.set()  # (the run waits on it, a stop, the lease and parking now)
        await self.closing
        if self._stop.is_set():
            return
        await self.end("ERROR", "error: worker process exited with code -9")

    async def end(self, state: str, error: str = "", *args: Any, **kw: Any) -> None:
        self.ended = True
        self.ends.append((state, error))


async def _run(stop_first: bool) -> Probe:
    probe = Probe()
    killed = asyncio.Event()
    worker = types.SimpleNamespace(uid=779999, kill=killed.set)
    run = asyncio.create_task(probe._run_until_stopped(worker, Path("/")))
    await probe.conversing.wait()
    probe._request_stop(probe._over_memory(True, KERNEL_STOPPED), failed=True)
    if stop_first:  # the stop acted on (the worker killed) before the close ends
        await killed.wait()
    # (else the close ends in the same turn as the stop: nothing awaited between them)
    if not probe.closing.done():
        probe.closing.set_result(None)
    await run
    return probe


@pytest.mark.parametrize("stop_first", [False, True], ids=["same turn", "stop first"])
def test_a_stop_that_comes_as_the_worker_closes_ends_the_session(stop_first: bool) -> None:
    probe = asyncio.run(_run(stop_first))
    assert probe.ends == [("ERROR", probe._over_memory(True, KERNEL_STOPPED))]
