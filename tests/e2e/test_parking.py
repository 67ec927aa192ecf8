"""Parking (AK_RUNNER__PARK_AFTER): a session that waits gives up its worker and its job,
and resumes by replay when its deadline passes, its event or signal comes, or it is
stopped; each activity runs once, also when the runner dies in the middle of parking.
Two runners and two dispatchers (two wakers), parking after 1 s, a 3 s ack wait; crashes,
NATS failures and freezes come from the runner's fault hook
(AK_TEST__FAULTS), and every wait is on a state, a journal record or a file."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from akcore import parking, subjects, wire
from nats.aio.client import Client
from nats.js.errors import KeyDeletedError, KeyNotFoundError

from tests.e2e.faultproject import (
    EFFECT,
    Env,
    fault_env,
    fire,
    gone,
    journal_log,
    manifest,
    runs,
)
from tests.helpers import Stack, frozen, start_stack, wait_until, write_project

CODE = (
    EFFECT
    + """


def sleeper(event, session_id):
    effect(session_id, "a1")
    time.sleep(5)
    effect(session_id, "a2")
    print("done")


def long_sleeper(event, session_id):
    effect(session_id, "a1")
    time.sleep(3600)
    effect(session_id, "a2")


def event_waiter(event, session_id):
    sub = autokitteh.subscribe("source", "data.method == 'POST'")
    effect(session_id, "a1")
    ev = autokitteh.next_event(sub)
    effect(session_id, "a2")
    print("got", ev.body.json["n"])


def signal_waiter(event, session_id):
    effect(session_id, "a1")
    sig = autokitteh.next_signal("go", timeout=600)
    effect(session_id, "a2")
    print("signal", sig.payload)


def signaller(event):
    body = event.data.body.json
    autokitteh.signal(body["to"], body.get("name", "go"), body.get("n", 7))


def picky(event, session_id):
    effect(session_id, "a1")
    go = autokitteh.next_signal("go")
    first = autokitteh.next_signal("other", timeout=600)
    second = autokitteh.next_signal("other", timeout=600)
    print("picky", go.payload, first.payload, second.payload)


def stop_parking(event, session_id):
    effect(session_id, "a1")
    time.sleep(3600)
    effect(session_id, "a2")


def double_wake(event, session_id):
    effect(session_id, "a1")
    time.sleep(4)
    effect(session_id, "a2")  # step 3: the fault hook holds the woken attempt there
    print("done")


def timed_sleeps(event, session_id):
    effect(session_id, "a1")
    time.sleep(3)
    time.sleep(3)
    effect(session_id, "a2")


def timed_waiter(event, session_id):
    sub = autokitteh.subscribe("source", "data.method == 'PUT'")
    effect(session_id, "a1")
    print("timed out", autokitteh.next_event(sub, timeout=4) is None)
    effect(session_id, "a2")


def late_wake(event, session_id):
    effect(session_id, "a1")
    sig = autokitteh.next_signal("go", timeout=4)
    effect(session_id, "a2")
    print("late wake got", "nothing" if sig is None else sig.name)


def parent(event, session_id):
    child = autokitteh.start("f.py:child", {})
    end = autokitteh.next_signal(child, timeout=600)
    effect(session_id, "a1")
    print("child said", end.payload)


def child(event):
    time.sleep(4)
    return "hello"


def parks_once(session_id):
    effect(session_id, "a1")
    time.sleep(4)
    effect(session_id, "a2")
    print("done")


# The same handler under the names the fault hook picks its sessions by.
def crash_parked(event, session_id):
    parks_once(session_id)


def crash_registered(event, session_id):
    parks_once(session_id)


def away_parked(event, session_id):
    parks_once(session_id)


def away_registered(event, session_id):
    parks_once(session_id)


def stale_register(event, session_id):
    effect(session_id, "a1")
    time.sleep(4)
    effect(session_id, "a2")
    time.sleep(3600)
    effect(session_id, "a3")
"""
)

HANDLERS = [
    "sleeper",
    "long_sleeper",
    "event_waiter",
    "signal_waiter",
    "signaller",
    "timed_waiter",
    "late_wake",
    "parent",
    "crash_parked",
    "crash_registered",
    "away_parked",
    "away_registered",
    "stale_register",
    "picky",
    "stop_parking",
    "double_wake",
]
SOURCE = "    - name: source\n      webhook: {}\n"  # the events event_waiter waits for
FAULTS = "; ".join(
    [
        "crash parked entry=f.py:crash_parked",
        "crash registered entry=f.py:crash_registered",
        # NATS away for a moment right after the `parked` record, or right after the put
        "unavailable parked entry=f.py:away_parked",
        "unavailable registered entry=f.py:away_registered",
        # the runner's loop frozen right after the `parked` record (a SIGSTOP, a long GC)
        "stall=25 parked entry=f.py:stale_register",
        # held as it parks until a stop request reaches it
        "hold parking entry=f.py:stop_parking",
        # the attempts a wake starts, held after reading the journal until the test says
        "hold read attempt=2 entry=f.py:double_wake file=$MARKER_DIR/go-double_wake",
        # and the one that won, live before its activity a2, until the test says
        "hold step step=3 attempt=2 entry=f.py:double_wake file=$MARKER_DIR/go-a2-double_wake",
    ]
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    settings = {
        "AK_JOBS__ACK_WAIT": "3",
        "AK_RUNNER__PARK_AFTER": "1",
        "AK_TEST__FAULTS": FAULTS,
    }
    yield from fault_env(
        tmp_path_factory,
        "parking",
        CODE,
        HANDLERS,
        settings,
        ("--runners", "2", "--dispatchers", "2"),
        extra_triggers=SOURCE,
    )


def _fire(stack: Stack, path: str, body: Any = None) -> str:
    return fire(stack, "parking", path, body)


def _parked(stack: Stack, sid: str, times: int = 1) -> list[dict[str, Any]]:
    """Waits until the session's journal has ``times`` `parked` records; returns them."""
    found: list[dict[str, Any]] = []

    def probe() -> bool:
        found[:] = [e["parked"] for e in journal_log(stack, sid) if e["type"] == "parked"]
        return len(found) >= times

    wait_until(probe, f"{sid} parked {times} time(s)\n{stack.output()[-3000:]}", 60)
    return found


def _runners(log: list[dict[str, Any]]) -> list[str]:
    """The runner of each attempt, in order."""
    return [
        e["state"]["running"]["runner"]
        for e in log
        if e["type"] == "state" and "running" in e["state"]
    ]


def _state(stack: Stack, sid: str) -> str:
    return str(json.loads(stack.ak("session", "get", sid, "-j", check=True).stdout)["state"])


def _prints(stack: Stack, sid: str) -> str:
    return stack.ak("session", "prints", sid, "-n", check=True).stdout


def test_a_sleep_parks_and_resumes_after_its_deadline(
    env: Env,
) -> None:
    stack, paths, markers = env
    sid = _fire(stack, paths["sleeper"])
    (parked,) = _parked(stack, sid)
    assert parked["reason"] == "sleep" and parked["until"], parked
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    assert len(_runners(journal_log(stack, sid))) == 2  # the one that parked, the one that resumed
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1
    assert _prints(stack, sid) == "done\n"
    text = stack.ak("session", "log", sid, check=True).stdout
    assert "Parked: seq #2, waiting for sleep until " in text, text


def test_next_event_parks_and_an_event_wakes_it(env: Env) -> None:
    stack, paths, markers = env
    sid = _fire(stack, paths["event_waiter"])
    (parked,) = _parked(stack, sid)
    assert parked["reason"] == "next_event" and not parked["until"], parked
    status, _ = stack.post_json(paths["source"], {"n": 41})
    assert status == 202
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    assert _prints(stack, sid) == "got 41\n"
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1


def test_a_signal_wakes_a_parked_session_on_the_other_runner(
    env: Env,
) -> None:
    """next_signal parks the session: its worker is gone and it stays RUNNING. The runner
    that parked it is frozen; the signal wakes it and the other runner resumes it."""
    stack, paths, markers = env
    sid = _fire(stack, paths["signal_waiter"])
    (parked,) = _parked(stack, sid)
    assert parked["reason"] == "next_signal" and parked["until"], parked
    (worker,) = runs(markers, sid, "a1")
    wait_until(lambda: gone(worker), f"the parked session's worker {worker} to exit", 30)
    assert _state(stack, sid) == "RUNNING"
    (first,) = _runners(journal_log(stack, sid))
    pid = int(first.rsplit("-", 1)[1])
    with frozen(pid):  # it takes nothing more: the wake job goes to the other one
        _fire(stack, paths["signaller"], {"to": sid})
        session = stack.wait_session(sid, timeout=90)
    assert session["state"] == "COMPLETED", session
    runners = _runners(journal_log(stack, sid))
    assert len(runners) == 2 and runners[1] != first, runners
    assert _prints(stack, sid) == "signal 7\n"
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1


def test_a_parked_wait_keeps_its_timeout(env: Env) -> None:
    """next_event with a 4 s timeout parks, wakes at its deadline, and times out then."""
    stack, paths, markers = env
    sid = _fire(stack, paths["timed_waiter"])
    (parked,) = _parked(stack, sid)
    assert parked["reason"] == "next_event" and parked["until"], parked
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    assert _prints(stack, sid) == "timed out True\n"
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1


def test_a_wake_after_the_deadline_still_takes_the_signal_that_came_before_it(
    env: Env,
) -> None:
    """next_signal("go", timeout=4) parks; "go" reaches its inbox before the deadline, but
    the wakers are frozen until after it (a flood in the wake's lane, a frozen dispatcher).
    The woken wait has no time left: it takes the signal all the same. It reported a
    timeout when the inbox's consumer, made as the woken attempt starts, had not delivered
    the signal by the time the worker's replay reached the wait (seen with that consumer
    made late; tests/integration/test_inbox_take.py shows the race itself)."""
    stack, paths, markers = env
    sid = _fire(stack, paths["late_wake"])
    (parked,) = _parked(stack, sid)
    deadline = datetime.datetime.fromisoformat(parked["until"]).timestamp()
    dispatchers = stack.pids("dispatcher")
    assert len(dispatchers) == 2, dispatchers
    with contextlib.ExitStack() as held:
        for pid in dispatchers:
            held.enter_context(frozen(pid))
        go = wire.InboxMessage(kind=wire.INBOX_SIGNAL, name="go")

        async def send(nc: Client) -> None:
            await nc.jetstream().publish(
                subjects.inbox_subject(sid), wire.encode(go), headers=parking.inbox_headers(go)
            )

        stack.as_service("dispatcher", send)
        wait_until(lambda: time.time() > deadline + 0.5, "the wait's deadline passed", 30)
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    assert _prints(stack, sid) == "late wake got go\n"
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1


def test_a_parent_parks_until_its_child_ends(env: Env) -> None:
    stack, paths, markers = env
    sid = _fire(stack, paths["parent"])
    (parked,) = _parked(stack, sid)
    assert parked["reason"] == "child", parked
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    assert _prints(stack, sid) == "child said {'completed': True, 'value': 'hello'}\n"
    assert len(runs(markers, sid, "a1")) == 1


def test_a_parked_session_stops_when_asked(env: Env) -> None:
    """A session parked in an hour's sleep ends STOPPED on `ak session stop`, not at its
    deadline."""
    stack, paths, markers = env
    sid = _fire(stack, paths["long_sleeper"])
    _parked(stack, sid)
    (worker,) = runs(markers, sid, "a1")
    wait_until(lambda: gone(worker), f"the parked session's worker {worker} to exit", 30)
    assert _state(stack, sid) == "RUNNING"
    stack.ak("session", "stop", sid, "--reason", "enough", check=True)
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "STOPPED", session
    assert len(runs(markers, sid, "a1")) == 1 and not runs(markers, sid, "a2")


@pytest.mark.parametrize("handler", ["crash_parked", "crash_registered"])
def test_a_runner_dying_while_parking_loses_nothing(env: Env, handler: str) -> None:
    """The runner dies right after the `parked` record (the session not in AK_PARKED yet),
    or right after putting it there (the job not acked yet): the job comes back, finds the
    session parked, sees that it is in AK_PARKED and is dropped; the session wakes at its
    deadline and completes, each activity run once."""
    stack, paths, markers = env
    before = stack.output().count("fault injected")
    sid = _fire(stack, paths[handler])
    session = stack.wait_session(sid, timeout=90)
    assert session["state"] == "COMPLETED", session
    assert stack.output().count("fault injected") > before
    assert len(_parked(stack, sid)) == 1
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1
    assert _prints(stack, sid) == "done\n"
    # The session ran twice: the attempt that parked (and died), and the one it woke to.
    assert len(_runners(journal_log(stack, sid))) == 2


@pytest.mark.parametrize("handler", ["away_parked", "away_registered"])
def test_a_park_that_fails_for_a_moment_loses_nothing(env: Env, handler: str) -> None:
    """NATS (or the KV bucket) away for a moment right after the `parked` record (before
    the AK_PARKED put) or right after the put (before the ack): the attempt journals nothing
    after its `parked` record and naks its job; the session resumes and completes, each
    activity once (a `retry` record written after the `parked` one made every later job of
    the session look stale: it stayed RUNNING for ever)."""
    stack, paths, markers = env
    sid = _fire(stack, paths[handler])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1


def test_a_runner_thawing_mid_park_does_not_unpark_a_later_parking(
    env: Env,
) -> None:
    """Runner A parks the session (record s1) and freezes before its AK_PARKED put. Its job
    goes to runner B, which finds the journal parked and puts the entry itself; a waker
    wakes the session at its deadline, B resumes it and it parks again (record s2, an hour's
    sleep). Then A thaws: it must not put its s1 entry over the s2 one (a waker would wake
    s1, a duplicate wake job JetStream drops, and delete the entry: the session would stay
    RUNNING, for an hour or for ever). The session still stops when asked."""
    stack, paths, markers = env
    sid = _fire(stack, paths["stale_register"])
    _parked(stack, sid, times=2)
    wait_until(
        lambda: f"session {sid}: attempt 1 stops: it lost its job while parking" in stack.output(),
        "the frozen runner thawed",
        60,
    )
    stack.ak("session", "stop", sid, "--reason", "enough", check=True)
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "STOPPED", session
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1


def test_no_parking_when_off(tmp_path: Path) -> None:
    """With AK_RUNNER__PARK_AFTER=off a sleeping session keeps its worker (nothing changes)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    settings = {"MARKER_DIR": str(markers), "AK_RUNNER__PARK_AFTER": "off"}
    stack = start_stack(tmp_path / "home", settings)
    try:
        proj = write_project(
            tmp_path / "proj",
            {"autokitteh.yaml": manifest("parking", ["sleeper"], SOURCE), "f.py": CODE},
        )
        sid = _fire(stack, stack.deploy_paths(proj)["sleeper"])
        session = stack.wait_session(sid, timeout=60)
        assert session["state"] == "COMPLETED", session
        assert not [e for e in journal_log(stack, sid) if e["type"] == "parked"]
        assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1
    finally:
        stack.stop()


def test_a_parked_wait_wakes_only_for_what_it_takes(env: Env) -> None:
    """A session parked in next_signal("go") is not woken by signals of another name: they
    wait in its inbox, and it reads them, in order, once "go" has woken it. Another session
    parked in next_signal("go") and signalled after those messages shows that the wakers
    have read them (they read the inbox in order)."""
    stack, paths, markers = env
    sid = _fire(stack, paths["picky"])
    sentinel = _fire(stack, paths["signal_waiter"])
    _parked(stack, sid)
    _parked(stack, sentinel)
    for n in (1, 2):
        sig = _fire(stack, paths["signaller"], {"to": sid, "name": "other", "n": n})
        assert stack.wait_session(sig)["state"] == "COMPLETED"
    _fire(stack, paths["signaller"], {"to": sentinel})
    assert stack.wait_session(sentinel, timeout=60)["state"] == "COMPLETED"
    assert len(_runners(journal_log(stack, sid))) == 1  # not woken
    _fire(stack, paths["signaller"], {"to": sid, "n": 3})
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    assert _prints(stack, sid) == "picky 3 1 2\n"
    assert len(_runners(journal_log(stack, sid))) == 2 and len(_parked(stack, sid)) == 1


def test_a_stop_read_as_a_session_parks_ends_it(env: Env) -> None:
    """The stop request reaches the attempt after it has given up its handler's wait to
    park and before its `parked` record (the fault hook holds it there until it does): it
    does not park (a parked session whose stop was read already slept until its deadline,
    an hour here); it ends STOPPED."""
    stack, paths, markers = env
    sid = _fire(stack, paths["stop_parking"])
    held = "fault injected: hold at parking of step 0 (f.py:stop_parking)"
    wait_until(lambda: held in stack.output(), "the attempt held as it parks", 60)
    stack.ak("session", "stop", sid, "--reason", "enough", check=True)
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "STOPPED", session
    assert not _parked_records(stack, sid)
    assert len(runs(markers, sid, "a1")) == 1 and not runs(markers, sid, "a2")


def test_a_second_wake_job_of_one_parking_is_dropped(env: Env) -> None:
    """A second wake job of the same parking, published by hand with another message id
    (as a waker past JetStream's duplicate window would), reaches a runner while the first
    one's attempt is held after reading the journal: both read it parked, both go on, one
    writes its `started` first and the other is fenced. The fenced one is acked and dropped
    (it was left to come back, and fenced the other in turn until the attempts ran out):
    the one that won is held live before its activity a2 until the fenced one is dropped,
    or has come back (a third attempt)."""
    stack, paths, markers = env
    sid = _fire(stack, paths["double_wake"])

    async def entry(nc: Client) -> parking.Entry:
        kv = await nc.jetstream().key_value(subjects.BUCKET_PARKED)
        for _ in range(600):
            try:
                found = await kv.get(sid)
                return parking.Entry.decode(found.value or b"")
            except (KeyNotFoundError, KeyDeletedError):
                await asyncio.sleep(0.05)
        raise AssertionError(f"{sid} was never in AK_PARKED")

    parked = stack.as_service("dispatcher", entry)
    hold = "fault injected: hold at read of step 0 (f.py:double_wake)"
    wait_until(lambda: hold in stack.output(), "the waker's wake job held", 60)

    async def wake_again(nc: Client) -> None:
        await nc.jetstream().publish(
            subjects.job_subject(parked.wake_job().project_id, sid),
            wire.encode(parked.wake_job()),
            headers={subjects.HDR_MSG_ID: f"wake-again-{sid}"},
        )

    stack.as_service("dispatcher", wake_again)
    wait_until(lambda: stack.output().count(hold) >= 2, "the second wake job held", 60)
    (markers / "go-double_wake").touch()
    held = "fault injected: hold at step of step 3 (f.py:double_wake)"
    dropped = f"session {sid}: a wake job fenced by another one; dropped"

    def settled() -> bool:  # the winner held; the fenced job dropped or come back
        out = stack.output()
        return held in out and (dropped in out or len(_runners(journal_log(stack, sid))) > 2)

    wait_until(settled, "the winner held, the fenced wake job dropped or come back", 60)
    (markers / "go-a2-double_wake").touch()
    session = stack.wait_session(sid, timeout=90)
    assert session["state"] == "COMPLETED", session
    runners = _runners(journal_log(stack, sid))
    assert len(runners) == 2, runners  # the attempt that parked, the wake job that won
    assert dropped in stack.output()
    for name in ("a1", "a2"):
        assert len(runs(markers, sid, name)) == 1, name


def _parked_records(stack: Stack, sid: str) -> list[dict[str, Any]]:
    return [e["parked"] for e in journal_log(stack, sid) if e["type"] == "parked"]


def test_a_wake_keeps_the_session_timeout(tmp_path: Path) -> None:
    """AK_RUNNER__SESSION_TIMEOUT means the same with parking on: two 3 s sleeps under a 4 s
    limit end the session in ERROR, though each attempt (parked after 1 s, woken at its
    sleep's end) runs for less than that."""
    markers = tmp_path / "markers"
    markers.mkdir()
    settings = {
        "MARKER_DIR": str(markers),
        "AK_RUNNER__PARK_AFTER": "1",
        "AK_RUNNER__SESSION_TIMEOUT": "4",
    }
    stack = start_stack(tmp_path / "home", settings)
    try:
        proj = write_project(
            tmp_path / "proj",
            {"autokitteh.yaml": manifest("parking", ["timed_sleeps"]), "f.py": CODE},
        )
        sid = _fire(stack, stack.deploy_paths(proj)["timed_sleeps"])
        session = stack.wait_session(sid, timeout=60)
        assert session["state"] == "ERROR", session
        assert "over its time limit of 4 s" in session.get("error", ""), session
        assert _parked_records(stack, sid)
        assert len(runs(markers, sid, "a1")) == 1 and not runs(markers, sid, "a2")
    finally:
        stack.stop()
