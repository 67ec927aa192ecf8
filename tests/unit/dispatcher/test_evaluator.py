"""Filters judged within a budget, in evaluator processes that may die or hang."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import pytest
from ak_dispatcher import evaluators
from ak_dispatcher.evaluator import FilterRequest, judge_event, judge_within
from ak_dispatcher.evaluators import Evaluators
from akcore import cel, wire

ITEMS = list(range(3000))
# Nine million steps of the interpreter: minutes, on any machine.
HEAVY = "data.items.all(x, data.items.all(y, y >= 0))"
LIGHT = "data.method == 'POST'"


def _event() -> bytes:
    event = wire.Event("evt_1", "prj_1", "trg_1", "post", {"method": "POST", "items": ITEMS})
    return wire.encode(event)


def test_a_filter_stops_at_its_budget() -> None:
    variables = cel.variables("post", {"method": "POST", "items": ITEMS})
    before = signal.getsignal(signal.SIGPROF)
    verdict = judge_within(HEAVY, variables, 50)
    assert verdict == cel.Verdict(False, "filter ran over its 50 ms budget")
    # The timer is off again: the next filter runs to its end, and the signal is as it was.
    assert judge_within(LIGHT, variables, 50) == cel.Verdict(True)
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGPROF) == before


def test_the_budget_holds_every_time() -> None:
    # A signal raised inside some C calls is swallowed: the timer fires again until one lands.
    variables = cel.variables("post", {"body": {"json": ITEMS}})
    nested = "data.body.json.all(x, data.body.json.all(y, y >= 0))"
    for _ in range(10):
        assert judge_within(nested, variables, 20).problem == "filter ran over its 20 ms budget"


def test_the_event_is_read_once_for_all_its_filters() -> None:
    req = FilterRequest(_event(), [LIGHT, HEAVY, "data.nope", LIGHT], 50)
    assert list(judge_event(req)) == [
        cel.Verdict(True),
        cel.Verdict(False, "filter ran over its 50 ms budget"),
        cel.Verdict(False, "evaluation error: no such member in mapping: 'nope'"),
        cel.Verdict(True),
    ]


def test_request_round_trip() -> None:
    req = FilterRequest(_event(), [LIGHT], 100)
    assert wire.decode(FilterRequest, wire.encode(req)) == req


@pytest.fixture
async def pool() -> AsyncIterator[Evaluators]:
    p = Evaluators(budget_ms=1000)
    yield p
    await p.close()


async def test_one_heavy_filter_does_not_hold_up_another_event(pool: Evaluators) -> None:
    # Both evaluators started (each takes a request; the second starts while the first works).
    await asyncio.gather(pool.judge(_event(), [LIGHT]), pool.judge(_event(), [LIGHT]))
    heavy = asyncio.create_task(pool.judge(_event(), [HEAVY, LIGHT]))
    assert await pool.judge(_event(), [LIGHT]) == [cel.Verdict(True)]
    assert not heavy.done()  # the light event was answered while the heavy one was judged
    assert await heavy == [
        cel.Verdict(False, "filter ran over its 1000 ms budget"),
        cel.Verdict(True),
    ]


async def test_a_filter_over_the_evaluators_memory_fails_and_the_evaluator_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AK_DISPATCHER__EVALUATOR_MEMORY_MB", "128")  # (evaluators inherit it)
    pool = Evaluators(budget_ms=20_000)
    data = {"method": "POST", "s": "x" * 400_000, "items": ITEMS[:1000]}
    event = wire.encode(wire.Event("evt_1", "prj_1", "trg_1", "post", data))
    # Strings within the size limit, but 800 MB of them: one step of the interpreter each.
    greedy = "data.items.map(x, data.s + data.s).size() == 0"
    assert await pool.judge(event, [greedy, LIGHT]) == [
        cel.Verdict(
            False,
            "filter ran over the evaluator's memory limit of 128 MiB "
            "(AK_DISPATCHER__EVALUATOR_MEMORY_MB)",
        ),
        cel.Verdict(True),
    ]
    (evaluator,) = pool._idle
    assert await pool.judge(event, [LIGHT]) == [cel.Verdict(True)]
    assert pool._idle == [evaluator]  # the same process
    await pool.close()


async def test_an_evaluator_that_ended_while_idle_is_replaced(pool: Evaluators) -> None:
    assert await pool.judge(_event(), [LIGHT]) == [cel.Verdict(True)]
    (idle,) = pool._idle
    idle.proc.kill()
    await idle.proc.wait()
    assert await pool.judge(_event(), [LIGHT]) == [cel.Verdict(True)]
    assert pool._idle[0] is not idle


async def test_an_evaluator_that_hangs_or_dies_is_stopped_and_its_filter_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(evaluators, "GRACE", 0.2)
    hanging = Evaluators(budget_ms=10)
    monkeypatch.setattr(evaluators, "COMMAND", (sys.executable, "-c", READY_THEN_HANG))
    assert (
        await hanging.judge(_event(), [LIGHT, LIGHT])
        == [
            cel.Verdict(
                False, "the filter's evaluator did not answer within 0.3 s and was stopped"
            ),
        ]
        * 2
    )
    assert hanging._idle == []
    monkeypatch.setattr(evaluators, "COMMAND", (sys.executable, "-c", READY_THEN_DIE))
    # (its exit code, 0: waited for, not killed, once it closed its output)
    (dead,) = await hanging.judge(_event(), [LIGHT])
    assert dead == cel.Verdict(False, "the filter's evaluator ended (exit code 0)")
    await hanging.close()


READY = "import sys; sys.stdout.buffer.write(bytes(4)); sys.stdout.flush(); "
READY_THEN_HANG = READY + "import time; time.sleep(60)"
READY_THEN_DIE = READY + "sys.stdin.buffer.read(1)"
# A real evaluator whose start takes a second (its imports on a loaded machine, say).
SLOW_START = "import time; time.sleep(1); from ak_dispatcher.evaluator import main; main()"


async def test_an_evaluators_start_does_not_count_against_its_first_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The time an evaluator takes to start is not part of its first filter's deadline
    (here 0.3 s, and a start of a second): the filter is judged."""
    monkeypatch.setattr(evaluators, "GRACE", 0.2)
    monkeypatch.setattr(evaluators, "COMMAND", (sys.executable, "-c", SLOW_START))
    slow = Evaluators(budget_ms=10)
    assert await slow.judge(_event(), [LIGHT, LIGHT]) == [cel.Verdict(True)] * 2
    await slow.close()


async def test_an_evaluator_that_does_not_start_in_time_leaves_the_event_to_be_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An evaluator that has not said it is ready within ``STARTUP`` is stopped and the
    event's filters are not judged (the machine is at fault: the dispatcher tries the event
    again); one that ends as it starts fails the event's filters, each with a note."""
    monkeypatch.setattr(evaluators, "STARTUP", 0.5)
    monkeypatch.setattr(
        evaluators, "COMMAND", (sys.executable, "-c", "import time; time.sleep(60)")
    )
    pool = Evaluators(budget_ms=10)
    with pytest.raises(TimeoutError, match="a filter evaluator did not start within 0.5 s"):
        await pool.judge(_event(), [LIGHT])
    assert pool._idle == []
    monkeypatch.setattr(evaluators, "COMMAND", (sys.executable, "-c", "raise SystemExit(3)"))
    assert (
        await pool.judge(_event(), [LIGHT, LIGHT])
        == [cel.Verdict(False, "the filter's evaluator ended (exit code 3)")] * 2
    )
    assert await asyncio.wait_for(pool.judge(_event(), [LIGHT]), 5)  # its turn was given back
    await pool.close()


async def test_a_burst_of_one_triggers_heavy_filters_does_not_hold_up_another(
    pool: Evaluators,
) -> None:
    heavy = [asyncio.create_task(pool.judge(_event(), [HEAVY], "trg_a")) for _ in range(6)]
    await asyncio.sleep(0)  # (they queue up first)
    assert await pool.judge(_event(), [LIGHT], "trg_b") == [cel.Verdict(True)]
    assert sum(not t.done() for t in heavy) >= 3  # served in its turn, not after the burst
    for verdicts in await asyncio.gather(*heavy):
        assert verdicts == [cel.Verdict(False, "filter ran over its 1000 ms budget")]


async def test_fair_turns_go_round_the_keys() -> None:
    turns = evaluators.FairTurns(1)
    order: list[str] = []

    async def take(key: str) -> None:
        await turns.acquire(key)
        order.append(key)
        await asyncio.sleep(0)
        turns.release()

    await turns.acquire("a")  # the one turn is out
    waiting = [asyncio.create_task(take(k)) for k in ("a", "a", "a", "b", "c")]
    await asyncio.sleep(0)
    turns.release()
    await asyncio.gather(*waiting)
    assert order == ["a", "b", "c", "a", "a"]
    cancelled = asyncio.create_task(turns.acquire("x"))
    await turns.acquire("y")  # free again
    await asyncio.sleep(0)
    cancelled.cancel()  # a waiter given up on takes no turn with it
    turns.release()
    await asyncio.wait_for(turns.acquire("z"), 1)


async def test_an_evaluator_that_is_frozen_is_stopped_even_when_it_cannot_take_the_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An evaluator that said it is ready, then froze, is sent an event over the pipe's
    buffer (2 MB): the send does not wait for it for ever; the filter fails."""
    monkeypatch.setattr(evaluators, "GRACE", 0.2)
    monkeypatch.setattr(evaluators, "COMMAND", (sys.executable, "-c", READY_THEN_HANG))
    frozen = Evaluators(budget_ms=10)
    big = wire.encode(wire.Event("evt_1", "prj_1", "trg_1", "post", {"body": "x" * 2_000_000}))
    verdict = await asyncio.wait_for(frozen.judge(big, [LIGHT]), 20)
    assert verdict == [
        cel.Verdict(False, "the filter's evaluator did not answer within 0.3 s and was stopped")
    ]
    assert frozen._idle == []
    await frozen.close()


async def test_an_evaluator_that_writes_before_it_is_ready_fails_the_events_filters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stray print as the evaluator starts is not taken for a frame's length (which
    would wait out ``STARTUP`` for bytes that never come)."""
    stray = "import sys, time; sys.stdout.write('loaded'); sys.stdout.flush(); time.sleep(60)"
    monkeypatch.setattr(evaluators, "COMMAND", (sys.executable, "-c", stray))
    pool = Evaluators(budget_ms=10)
    verdicts = await asyncio.wait_for(pool.judge(_event(), [LIGHT]), 20)
    note = "the filter's evaluator wrote something other than its ready frame"
    assert verdicts == [cel.Verdict(False, note)]
    await pool.close()


async def test_an_evaluator_killed_as_it_starts_leaves_the_event_to_be_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed by a signal as it starts (the OOM killer, say), the machine is at fault: the
    event is not judged (its filters failed, it would start nothing), it is tried again."""
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(evaluators, "COMMAND", (sys.executable, "-c", suicide))
    pool = Evaluators(budget_ms=10)
    with pytest.raises(OSError, match="a filter evaluator was killed by signal 9 as it started"):
        await pool.judge(_event(), [LIGHT])
    await pool.close()


async def test_a_dispatcher_stopping_stops_an_evaluator_as_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait for a start (up to ``STARTUP``, 60 s) ends as the dispatcher stops: the
    evaluator is stopped and the event handed back (a failure that passes)."""
    monkeypatch.setattr(
        evaluators, "COMMAND", (sys.executable, "-c", "import time; time.sleep(600)")
    )
    pool = Evaluators(budget_ms=10)
    pool.stopping = asyncio.Event()
    started: list[asyncio.subprocess.Process] = []
    spawned = asyncio.Event()
    start = evaluators.Evaluator.start.__func__  # type: ignore[attr-defined]

    async def watched(cls: type[evaluators.Evaluator], stopping: asyncio.Event) -> object:
        original = asyncio.create_subprocess_exec

        async def spawn(*a: object, **kw: object) -> asyncio.subprocess.Process:
            proc = await original(*a, **kw)  # type: ignore[arg-type]
            started.append(proc)
            spawned.set()
            return proc

        monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
        return await start(cls, stopping)

    monkeypatch.setattr(evaluators.Evaluator, "start", classmethod(watched))
    judging = asyncio.create_task(pool.judge(_event(), [LIGHT]))
    await asyncio.wait_for(spawned.wait(), 20)
    pool.stopping.set()
    with pytest.raises(evaluators.Stopped):
        await asyncio.wait_for(judging, 20)
    assert started[0].returncode is not None  # stopped, not left running


async def test_an_evaluator_stopped_here_is_not_taken_for_one_the_machine_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One that closes its output as it starts and lives on is killed here after
    ``GRACE``: its SIGKILL is ours, not the OOM killer's (which would have the event tried
    again for ever); the event's filters fail with a note."""
    monkeypatch.setattr(evaluators, "GRACE", 0.2)
    lingers = "import os, time; os.close(1); time.sleep(60)"
    monkeypatch.setattr(evaluators, "COMMAND", (sys.executable, "-c", lingers))
    pool = Evaluators(budget_ms=10)
    note = "the filter's evaluator closed its output and did not end"
    assert await pool.judge(_event(), [LIGHT]) == [cel.Verdict(False, note)]
    await pool.close()
