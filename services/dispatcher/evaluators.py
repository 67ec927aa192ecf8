"""The dispatcher's evaluator processes: CEL filters judged off its event loop.

A few child processes (``evaluator.py``), started when first needed, judge each filter
within its budget. An event waits for an evaluator only when it has filters to judge; while
one evaluator works through a heavy filter (for at most its budget), the others and the
event loop go on. An evaluator that dies, or does not answer in far more than the budget
(``SLACK``, ``GRACE``), is killed; the filter it was on counts as failed and the event's
remaining filters go to a fresh one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from akcore import cel, wire

from .evaluator import HEADER, FilterRequest

log = logging.getLogger(__name__)

COMMAND = (sys.executable, "-m", "ak_dispatcher.evaluator")
PROCESSES = 2  # evaluators per dispatcher, each judging one event at a time
# An evaluator that has not answered within SLACK times a filter's budget plus GRACE seconds
# is deemed stuck. It reads the event first, and the budget counts CPU time, which a loaded
# machine hands out slowly (a quarter of a core, say): stopping it sooner would fail a filter
# that the machine, not the filter, made slow.
SLACK = 10
GRACE = 5.0
# Seconds an evaluator may take to start (its imports: over a second on a loaded machine)
# before it says it is ready; not counted against the first filter it is given. One that
# does not start in time is stopped, and the event is tried again later (the machine, not
# the event, is at fault).
STARTUP = 60.0


class Ended(Exception):
    """An evaluator ended, or said something else, before it said it was ready."""


class Killed(OSError):
    """An evaluator was killed by a signal as it started (the OOM killer, say): the machine
    is at fault, and the event is tried again (an ``OSError``: a failure that passes)."""


class Stopped(OSError):
    """The dispatcher stopped while an evaluator started (it was stopped too): the event
    is handed back (an ``OSError``: a failure that passes)."""


class Evaluator:
    """One evaluator process and its two pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self._in, self._out = proc.stdin, proc.stdout

    @classmethod
    async def start(cls, stopping: asyncio.Event | None = None) -> Evaluator:
        """A new evaluator, once it said it is ready (``STARTUP``). Raises ``Ended`` when
        it ended first, ``TimeoutError`` when it did not start in time (stopped),
        ``Stopped`` when ``stopping`` was set first (stopped)."""
        proc = await asyncio.create_subprocess_exec(
            *COMMAND,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        evaluator = cls(proc)
        try:
            async with asyncio.timeout(STARTUP):
                await _unless_stopping(evaluator._ready(), stopping)
        except asyncio.IncompleteReadError:
            if await evaluator.kill():  # it closed its output and lived on: ours, the -9
                raise Ended("closed its output and did not end") from None
            code = proc.returncode or 0
            if code < 0:
                raise Killed(
                    f"a filter evaluator was killed by signal {-code} as it started"
                ) from None
            raise Ended(f"ended (exit code {code})") from None
        except BaseException:
            await asyncio.shield(evaluator.kill())
            raise
        return evaluator

    async def _ready(self) -> None:
        (n,) = HEADER.unpack(await self._out.readexactly(HEADER.size))
        if n:  # (a stray print as it started, read as a frame's length)
            raise Ended("wrote something other than its ready frame")

    async def send(self, req: FilterRequest) -> None:
        body = wire.encode(req)  # the event's bytes copied once, into the request
        self._in.write(HEADER.pack(len(body)))
        self._in.write(body)
        await self._in.drain()

    async def verdict(self) -> cel.Verdict:
        (n,) = HEADER.unpack(await self._out.readexactly(HEADER.size))
        return wire.decode(cel.Verdict, await self._out.readexactly(n))

    async def kill(self) -> bool:
        """Ends the process; True when it was killed here (not when it ended by itself)."""
        if self.proc.returncode is None and self._out.at_eof():
            # It closed its output: it is ending. Its exit code comes from the wait (a kill
            # now would have subprocess look first, reaping it before asyncio's watcher,
            # which then reports 255).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GRACE):
                    await self.proc.wait()
        killed = False
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended just now
                self.proc.kill()
                killed = True
        await self.proc.wait()
        return killed

    async def close(self) -> None:
        """Ends the process by closing its input (it finishes what it was doing first)."""
        self._in.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=GRACE)
        except TimeoutError:
            await self.kill()


async def _unless_stopping(
    ready: Coroutine[Any, Any, None], stopping: asyncio.Event | None
) -> None:
    """Awaits ``ready``; raises ``Stopped`` (``ready`` cancelled) once ``stopping`` is set."""
    if stopping is None:
        return await ready
    task = asyncio.ensure_future(ready)
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise Stopped("the dispatcher is stopping")
    return task.result()


class FairTurns:
    """``n`` turns handed out in turn to each key (a trigger) that waits for one, and in
    arrival order within a key: a burst of one trigger's events does not make another
    trigger's event wait behind the whole burst."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._queues: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._order: collections.deque[str] = collections.deque()  # keys with waiters

    async def acquire(self, key: str) -> None:
        if self.free > 0 and not self._order:
            self.free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = collections.deque()
            self._order.append(key)
        queue.append(granted)
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.release()  # granted as it was cancelled: pass the turn on
            elif granted in queue:
                queue.remove(granted)
            raise

    def release(self) -> None:
        while self._order:
            key = self._order.popleft()
            queue = self._queues[key]
            waiter = queue.popleft() if queue else None
            if queue:
                self._order.append(key)  # its next event waits for the next round
            else:
                del self._queues[key]
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class Evaluators:
    """Judges events by their filters, ``PROCESSES`` events at a time, taking turns by
    destination (trigger or connection)."""

    def __init__(self, budget_ms: int, processes: int = PROCESSES) -> None:
        self.budget_ms = budget_ms
        self._turns = FairTurns(processes)
        self._idle: list[Evaluator] = []
        self.stopping: asyncio.Event | None = None  # set: evaluators starting are stopped

    async def judge(self, event: bytes, filters: list[str], key: str = "") -> list[cel.Verdict]:
        """Each filter's verdict on ``event`` (an encoded ``wire.Event`` whose destination
        is ``key``), in order."""
        await self._turns.acquire(key)
        try:
            return await self._judge(event, filters)
        finally:
            self._turns.release()

    async def _judge(self, event: bytes, filters: list[str]) -> list[cel.Verdict]:
        verdicts: list[cel.Verdict] = []
        while len(verdicts) < len(filters):
            rest = filters[len(verdicts) :]
            try:
                evaluator = await self._take()
            except Ended as e:  # as it started: the next would most likely do the same
                log.warning("a filter evaluator %s as it started", e)
                verdicts.extend(cel.Verdict(False, f"the filter's evaluator {e}") for _ in rest)
                break
            except TimeoutError as e:  # the machine is slow: the event is tried again later
                raise TimeoutError(f"a filter evaluator did not start within {STARTUP:g} s") from e
            try:
                # (bounded: a frozen evaluator does not read a request over the pipe's buffer)
                request = FilterRequest(event, rest, self.budget_ms)
                await asyncio.wait_for(evaluator.send(request), self._deadline())
                for _ in rest:
                    verdict = await asyncio.wait_for(evaluator.verdict(), self._deadline())
                    verdicts.append(verdict)
            except Exception as e:  # it died, hangs, or answered nonsense
                await evaluator.kill()
                verdicts.append(cel.Verdict(False, self._failure(e, evaluator)))
                continue
            except BaseException:  # cancelled mid-request: its next answer is not ours
                await asyncio.shield(evaluator.kill())
                raise
            self._idle.append(evaluator)
        return verdicts

    async def _take(self) -> Evaluator:
        while self._idle:
            evaluator = self._idle.pop()
            if evaluator.proc.returncode is None:
                return evaluator
            await evaluator.kill()  # it ended while idle (killed from outside): not our filter
        return await Evaluator.start(self.stopping)

    def _deadline(self) -> float:
        return SLACK * self.budget_ms / 1000 + GRACE

    def _failure(self, e: BaseException, evaluator: Evaluator) -> str:
        if isinstance(e, TimeoutError):
            what = f"did not answer within {self._deadline():g} s and was stopped"
        elif isinstance(e, (EOFError, OSError)):
            what = f"ended (exit code {evaluator.proc.returncode})"
        else:
            what = f"failed ({type(e).__name__}: {e}) and was stopped"
        log.warning("filter evaluator %s %s; starting another", evaluator.proc.pid, what)
        return f"the filter's evaluator {what}"

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(e.close() for e in idle), return_exceptions=True)
