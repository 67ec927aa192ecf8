"""One writer per session under faults: a frozen or stalled runner's attempt is fenced off,
a runner that cannot heartbeat stops its own attempts, and sessions that fail for a reason
that repeats end in ERROR instead of running forever. Two runners, a 3 s ack wait; faults
come from the runner's test hook (AK_TEST__FAULTS) or SIGSTOP, never from a timed sleep."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.faultproject import EFFECT, Env, fault_env, fire, gone, journal_log, runs
from tests.helpers import Stack, frozen

CODE = (
    EFFECT
    + """
import autokitteh._runtime


def frozen(event, session_id):
    print("worker", effect(session_id, "a1"))
    time.sleep(4)  # a durable sleep: its runner is frozen after it began
    effect(session_id, "a2")
    print("done")


@autokitteh.activity
def held(sid):
    # runs until the test lets it finish (a file), so its runner can freeze meanwhile
    effect(sid, "held")
    while not os.path.exists(os.path.join(DIR, f"{sid}.release")):
        time.sleep(0.05)  # inside an activity: a plain sleep
    return "released"


def mid_activity(event, session_id):
    effect(session_id, "a1")
    print(held(session_id))
    effect(session_id, "a2")


def stalled(event, session_id):
    print("worker", effect(session_id, "a1"))
    effect(session_id, "a2")
    print("done")


def no_beats(event, session_id):
    effect(session_id, "a1")
    time.sleep(3)
    effect(session_id, "a2")
    print("done")


def delivered_twice(event, session_id):
    effect(session_id, "a1")
    effect(session_id, "a2")
    print("done")


def crashes(event, session_id):
    effect(session_id, "a1")


def malformed(event):
    autokitteh._runtime._runtime.channel.send({"type": "activity"})
    time.sleep(60)


def big_print(event):
    print("x" * (9 * 1024 * 1024))
    print("after")


def flaky(event, session_id):
    effect(session_id, "a1")
    effect(session_id, "a2")
    print("done")


def always_flaky(event, session_id):
    effect(session_id, "a1")


def parent(event):
    child = autokitteh.start("f.py:child", {})
    end = autokitteh.next_signal(child, timeout=60)
    print("child ended", end.payload)


def child(event):
    return "from the child"


def big_signal(event, session_id):
    try:
        autokitteh.signal(session_id, "x", b"y" * 9_000_000)
    except autokitteh.AutoKittehError as e:
        print(str(e)[:60])


def flood(event):
    while True:
        print("y")


def plain(event):
    print("fine")
"""
)

HANDLERS = [
    "frozen",
    "mid_activity",
    "stalled",
    "no_beats",
    "delivered_twice",
    "crashes",
    "malformed",
    "big_print",
    "flaky",
    "always_flaky",
    "parent",
    "big_signal",
    "flood",
    "plain",
]
FAULTS = (
    "stall=8 journaled step=1 entry=f.py:stalled; "
    "no_heartbeats started entry=f.py:no_beats; "
    # Attempt 1 of `delivered_twice` takes its heartbeats for confirmed while JetStream
    # hears none (as after a consumer leader change), so the job is delivered again while
    # attempt 1 holds it; attempt 1 waits before its second activity until the test says.
    "forgotten_heartbeats started entry=f.py:delivered_twice; "
    "hold step step=2 entry=f.py:delivered_twice file=$MARKER_DIR/delivered_twice.go; "
    "crash step step=1 entry=f.py:crashes attempt=any; "
    "unavailable step step=2 entry=f.py:flaky; "
    "unavailable step step=1 entry=f.py:always_flaky attempt=any; "
    "crash ended entry=f.py:child; "
    # Attempt 1 of `frozen` waits at its activity after the sleep until it is fenced: its
    # runner may be frozen at any moment after the sleep began (a loaded machine's test
    # saw the sleep late, after the session had ended), never in a window.
    "hold step step=3 entry=f.py:frozen"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    settings = {
        "AK_JOBS__ACK_WAIT": "3",
        "AK_JOBS__MAX_ATTEMPTS": "3",
        "AK_RUNNER__JOURNAL_MAX_RECORDS": "100",
        "AK_TEST__FAULTS": FAULTS,
    }
    yield from fault_env(tmp_path_factory, "fenced", CODE, HANDLERS, settings, ("--runners", "2"))


def _fire(stack: Stack, path: str, body: Any = None) -> str:
    return fire(stack, "fenced", path, body)


def _attempts(log: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(attempt, runner) of each `started` record."""
    return [
        (e["state"]["running"]["attempt"], e["state"]["running"]["runner"])
        for e in log
        if e["type"] == "state" and "running" in e["state"]
    ]


def _wait(what: str, check: Any, stack: Stack, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}\n{stack.output()[-4000:]}"
        time.sleep(0.1)
    return found


def _fenced_off(stack: Stack, sid: str, worker: int) -> None:
    """Waits until attempt 1 of ``sid`` stopped itself and its worker ``worker`` is gone."""
    _wait(
        "the attempt did not stop",
        lambda: f"session {sid}: attempt 1 stops" in stack.output(),
        stack,
    )
    _wait(f"worker {worker} of the fenced attempt is still alive", lambda: gone(worker), stack)


def _history(log: list[dict[str, Any]]) -> list[str]:
    """The journal as a list of what happened, in order."""
    out = []
    for e in log:
        if e["type"] == "state":
            ((state, detail),) = e["state"].items()
            out.append(f"{state}:{detail.get('attempt', '')}".rstrip(":"))
        elif e["type"] == "call_spec":
            out.append(f"call:{e['call_spec']['function']}")
        elif e["type"] in ("sleep", "print"):
            out.append(e["type"])
    return out


def test_a_frozen_runner_is_fenced_off(env: Env) -> None:
    """SIGSTOP of the runner once its session's durable sleep began: the other runner
    finishes the session; when the frozen one wakes up, its worker (woken from the sleep,
    held waiting for the go-ahead of the next activity) is killed and nothing it does
    reaches the journal."""
    stack, paths, markers = env
    sid = _fire(stack, paths["frozen"])
    _wait("the sleep never started", lambda: "sleep" in _history(journal_log(stack, sid)), stack)
    ((_, runner),) = _attempts(journal_log(stack, sid))
    pid = int(runner.rsplit("-", 1)[1])
    worker = runs(markers, sid, "a1")[0]
    with frozen(pid):
        session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    _fenced_off(stack, sid, worker)
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1
    log = journal_log(stack, sid)
    assert [a for a, _ in _attempts(log)] == [1, 2]
    assert _attempts(log)[1][1] != runner  # the other runner
    assert _history(log) == [
        "created",
        "running:1",
        "call:effect",
        "print",
        "sleep",
        "running:2",
        "call:effect",
        "print",
        "completed",
    ]
    assert stack.ak("session", "prints", sid, "-n", check=True).stdout == (
        f"worker {worker}\ndone\n"
    )


def test_a_runner_frozen_mid_activity_is_fenced_off(
    env: Env,
) -> None:
    """SIGSTOP of the runner while its worker runs an activity: the other runner replays
    what was journaled and runs that activity again (it had no record: at-least-once for an
    activity in flight); the frozen runner's outcome of it, sent meanwhile, is refused when it
    thaws, and its worker killed. Finished activities ran once."""
    stack, paths, markers = env
    sid = _fire(stack, paths["mid_activity"])
    _wait("the activity never started", lambda: len(runs(markers, sid, "held")) == 1, stack)
    ((_, runner),) = _attempts(journal_log(stack, sid))
    pid = int(runner.rsplit("-", 1)[1])
    with frozen(pid):
        _wait(
            "no other attempt ran the activity",
            lambda: len(runs(markers, sid, "held")) == 2,
            stack,
        )
        (markers / f"{sid}.release").touch()  # both workers' activities finish now
        session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    first = runs(markers, sid, "held")[0]
    _fenced_off(stack, sid, first)
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1
    log = journal_log(stack, sid)
    assert _history(log) == [
        "created",
        "running:1",
        "call:effect",
        "running:2",
        "call:held",
        "print",
        "call:effect",
        "completed",
    ]  # the frozen attempt's outcome of `held` is not in it
    assert stack.ak("session", "prints", sid, "-n", check=True).stdout == "released\n"


def test_a_stalled_runner_is_fenced_off(env: Env) -> None:
    """The runner's event loop blocks for 8 s right after journaling step 1 (the fault
    hook): its job goes to the other runner, which finishes the session; the stalled
    attempt's next step is refused and its worker killed. Each activity ran once."""
    stack, paths, markers = env
    sid = _fire(stack, paths["stalled"])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    worker = runs(markers, sid, "a1")[0]
    _fenced_off(stack, sid, worker)
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1
    log = journal_log(stack, sid)
    assert [a for a, _ in _attempts(log)] == [1, 2]
    assert _history(log) == [
        "created",
        "running:1",
        "call:effect",
        "running:2",
        "print",
        "call:effect",
        "print",
        "completed",
    ]


def test_a_runner_that_cannot_heartbeat_stops_its_attempt(
    env: Env,
) -> None:
    stack, paths, markers = env
    sid = _fire(stack, paths["no_beats"])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    out = stack.output()
    assert f"session {sid}: attempt 1 stops: " in out
    assert "no heartbeat confirmed" in out
    assert [a for a, _ in _attempts(journal_log(stack, sid))] == [1, 2]
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1


def test_an_attempt_stops_once_another_delivery_of_its_job_writes_the_journal(
    env: Env,
) -> None:
    """JetStream delivers a job again while its first attempt still holds it (its
    heartbeats taken as confirmed, never heard: a consumer leader change in a cluster): the
    second attempt writes `started` and finishes the session; the first stops as soon as
    that record is written (it watches its journal), killing its worker, instead of
    starting its next activity a second time (the fence alone stopped it only at its next
    write, after that activity ran). Each activity ran once."""
    stack, paths, markers = env
    sid = _fire(stack, paths["delivered_twice"])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    (markers / "delivered_twice.go").touch()  # attempt 1 may go on, if it still runs
    first = runs(markers, sid, "a1")[0]
    _fenced_off(stack, sid, first)
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1
    assert re.search(
        f"session {sid}: attempt 1 stops: it lost its job \\(attempt 2 of runner [^ ]+ "
        r"took the session over: its records \(from number 3\) go after this attempt's\)",
        stack.output(),
    )
    log = journal_log(stack, sid)
    assert [a for a, _ in _attempts(log)] == [1, 2]
    assert _history(log) == [
        "created",
        "running:1",
        "call:effect",
        "running:2",
        "call:effect",
        "print",
        "completed",
    ]


def test_a_session_whose_runner_dies_every_time_gives_up(
    env: Env,
) -> None:
    stack, paths, markers = env
    sid = _fire(stack, paths["crashes"])
    session = stack.wait_session(sid, timeout=120)
    assert session["state"] == "ERROR"
    assert session["error"].startswith(
        "error: the session did not finish in 3 attempts and is not tried again "
        "(AK_JOBS__MAX_ATTEMPTS is 3). Each time, the runner running it stopped"
    ), session["error"]
    assert runs(markers, sid, "a1") == []  # the runner died before the activity, each time
    assert [a for a, _ in _attempts(journal_log(stack, sid))] == [1, 2, 3]
    _still_serving(stack, paths)


def test_a_failure_that_may_pass_is_retried_with_replay(
    env: Env,
) -> None:
    """The store or NATS away mid-session (the fault hook): the attempt is journaled as a
    retry and the job naked; the next attempt replays what was done and finishes."""
    stack, paths, markers = env
    sid = _fire(stack, paths["flaky"])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    log = journal_log(stack, sid)
    (retry,) = [e["retry"] for e in log if e["type"] == "retry"]
    assert retry == {"attempt": 1, "error": "Unavailable: fault injected at step of step 2"}
    assert [a for a, _ in _attempts(log)] == [1, 2]
    assert len(runs(markers, sid, "a1")) == 1 and len(runs(markers, sid, "a2")) == 1


def test_a_failure_that_keeps_coming_back_gives_up_with_it(
    env: Env,
) -> None:
    stack, paths, _ = env
    sid = _fire(stack, paths["always_flaky"])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "ERROR"
    assert session["error"] == (
        "error: the session did not finish in 3 attempts and is not tried again "
        "(AK_JOBS__MAX_ATTEMPTS is 3). The last attempt stopped with: Unavailable: fault "
        "injected at step of step 1"
    )


def test_a_malformed_frame_ends_its_session(env: Env) -> None:
    stack, paths, _ = env
    sid = _fire(stack, paths["malformed"])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "ERROR"
    assert session["error"] == (
        "error: the worker process sent a malformed message (activity frame: step is "
        "missing); the session was ended so that it does not repeat it"
    )
    assert [a for a, _ in _attempts(journal_log(stack, sid))] == [1]  # not retried
    _still_serving(stack, paths)


def test_a_huge_print_is_cut_and_the_session_goes_on(
    env: Env,
) -> None:
    stack, paths, _ = env
    sid = _fire(stack, paths["big_print"])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout
    first, marker, last = prints.rstrip("\n").rsplit("\n", 2)
    assert first == "x" * 256 * 1024
    assert marker == "[... cut: 9,437,184 characters printed, the first 262,144 kept]"
    assert last == "after"
    assert [a for a, _ in _attempts(journal_log(stack, sid))] == [1]


def test_a_child_whose_runner_dies_after_its_end_still_tells_its_parent(
    env: Env,
) -> None:
    """The child's runner dies right after the child's `ended` record is written, before
    the parent hears of it: the child's next delivery finds the end in the journal and
    tells the parent, which goes on."""
    stack, paths, _ = env
    sid = _fire(stack, paths["parent"])
    session = stack.wait_session(sid, timeout=90)
    assert session["state"] == "COMPLETED", session
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout
    assert prints == "child ended {'completed': True, 'value': 'from the child'}\n"
    listed = stack.ak("session", "list", "-p", "fenced", "-j", check=True).stdout
    (child,) = [
        s for s in map(json.loads, listed.splitlines()) if s.get("parent_session_id") == sid
    ]
    assert [a for a, _ in _attempts(journal_log(stack, child["session_id"]))] == [1]  # ended once


def test_a_message_over_the_nats_limit_fails_in_the_handler_at_once(
    env: Env,
) -> None:
    stack, paths, _ = env
    sid = _fire(stack, paths["big_signal"])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout
    assert prints == "signal: what it sends is over the NATS message limit (838860\n"
    assert [a for a, _ in _attempts(journal_log(stack, sid))] == [1]  # not retried


def test_a_session_that_would_fill_the_journal_ends_at_its_limit(
    env: Env,
) -> None:
    """One session cannot fill AK_JOURNAL for all the others (its prints in a loop): it
    ends in ERROR at its journal's limit, and its end is journaled."""
    stack, paths, _ = env
    sid = _fire(stack, paths["flood"])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "ERROR"
    assert session["error"].startswith(
        "error: the session's journal reached its limit (100 records or 52,428,800 bytes"
    ), session["error"]
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    assert prints == ["y"] * 98  # created, started, 98 prints: 100 records; then the end
    _still_serving(stack, paths)


def _still_serving(stack: Stack, paths: dict[str, str]) -> None:
    sid = _fire(stack, paths["plain"])
    assert stack.wait_session(sid, timeout=60)["state"] == "COMPLETED"
