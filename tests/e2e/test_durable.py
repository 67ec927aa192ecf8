"""Durable execution end to end: activities, replay after SIGKILL of the runner, and the
reference's instrumentation cases, against a real `ak up --mode dev`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Stack, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: durable
  triggers:
{triggers}
"""
TRIGGER = """\
    - name: {name}
      call: {call}
      webhook: {{}}
"""

CRASH = """\
import os
import random
import time

import autokitteh

DIR = os.environ["MARKER_DIR"]
C1 = os.path.join(DIR, "c1")  # module level: runs plainly, on every replay


def _bump(name):
    with open(os.path.join(DIR, name), "a") as f:
        f.write("+")


@autokitteh.activity
def draw(name):
    _bump(name)
    return random.randint(1, 10**9)


@autokitteh.activity
def slow(name, seconds):
    _bump(name)
    open(os.path.join(DIR, name + ".running"), "w").close()
    time.sleep(seconds)  # inside an activity: a real sleep
    return "slow done"


def crash_in_sleep(event):
    n = draw("a1")
    print("first", n)
    time.sleep(4)
    print("second", n)
    print("woke", time.time())


def crash_between(event):
    n = draw("a2")
    print("drew", n)
    print("b", draw("b2"))


def crash_inside(event):
    n = draw("a3")
    print(slow("b3", 0.1), n)


@autokitteh.activity
def tick(i):
    with open(os.path.join(DIR, "ticks"), "a") as f:
        f.write(f"{i}\\n")
    return i * i


def crash_late(event):
    total = sum(tick(i) for i in range(610))
    print("total", total)


def changes(event):
    try:
        with open(C1):  # a builtin: runs plainly, so a replay sees what attempt 1 left
            seen = True
    except FileNotFoundError:
        seen = False
    if not seen:
        print("one", draw("c1"))
    else:
        print("other", random.random())
    time.sleep(3)
"""

CASES = """\
import asyncio
import random
import threading
import time
import urllib.request
import uuid

import autokitteh

autokitteh.register_no_activity([random.randint, urllib.request.Request])


class Oops(Exception):
    pass


@autokitteh.activity
def outer():
    print("ACT")
    return [random.random() for _ in range(3)]  # nested calls: part of one activity


@autokitteh.activity
def boom(x):
    raise Oops(x)


def nested_and_prints(event):
    print("START")
    values = outer()
    print("END", len(values))


def exceptions(event):
    try:
        boom(1)
    except Oops as e:
        print("caught", type(e).__name__, e.args)
    boom(2)


def big_values(event):
    big = random.getrandbits(1) + 2**100
    u = uuid.uuid4()
    print(type(big).__name__, big >= 2**100, type(u).__name__, len(str(u)))


def unpicklable(event):
    lock = threading.Lock()
    print("never", lock)


async def on_http_start(event):
    print("START:", event.event_type)
    await act()
    print("END", await asyncio.sleep(0, result="slept"))


@autokitteh.activity
async def act():
    print("ACT")


def no_activity(event):
    random.randint(1, 2)
    random.randrange(10)
    req = urllib.request.Request("http://localhost")
    req.get_method()


@autokitteh.inhibit_activities
def setup():
    return random.random()


def inhibited(event):
    setup()
    print("after", random.random() < 2)


def sleeper(event):
    time.sleep(0.2)
    print("slept")


class Picky(Exception):
    def __init__(self, a, *, b):
        super().__init__(a)


@autokitteh.activity
def picky():
    raise Picky(1, b=2)


@autokitteh.activity
def huge():
    return b"x" * (2 * 1024 * 1024)


def odd_errors(event):
    try:
        picky()
    except Picky as e:  # live: the very exception, though pickle cannot rebuild it
        print("caught", type(e).__name__, str(e))
    huge()


@autokitteh.activity
def whole(event):
    print("whole", random.random() < 2)
    return 5


def forks(event):
    import os

    print("before", random.random() < 2)
    pid = os.fork()  # (an activity, which returns in two processes)
    if pid == 0:  # the child: outside the session
        print("in the child")  # (to the worker's stderr, not the session's prints)
        try:
            autokitteh.set_value("k", 1)
            code = 3
        except autokitteh.AutoKittehError as e:
            code = 7 if "only a session's own process" in str(e) else 5
        os._exit(code if random.random() < 2 else 4)  # (a call that runs plainly)
    _, status = os.waitpid(pid, 0)
    print("child exited", os.waitstatus_to_exitcode(status))
    print("after", random.random() < 2)
"""

NAMES = ["crash_in_sleep", "crash_between", "crash_inside", "changes", "crash_late"]
# The runner dies where each crash test needs it (its test hook): right after the sleep's
# record is acknowledged, between two activities, with an activity finished but not yet
# journaled, after the step that the replay will take another path at, and 600 steps in.
FAULTS = (
    "crash journaled step=2 entry=crash.py:crash_in_sleep; "
    "crash journaled step=1 entry=crash.py:crash_between; "
    "crash journaling step=2 entry=crash.py:crash_inside; "
    "crash journaled step=1 entry=crash.py:changes; "
    "crash journaled step=600 entry=crash.py:crash_late"
)
CASE_NAMES = [
    "nested_and_prints",
    "exceptions",
    "big_values",
    "unpicklable",
    "on_http_start",
    "no_activity",
    "inhibited",
    "sleeper",
    "whole",
    "odd_errors",
    "forks",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str], Path]]:
    home = tmp_path_factory.mktemp("durable")
    markers = home / "markers"
    markers.mkdir()
    settings = {"MARKER_DIR": str(markers), "AK_JOBS__ACK_WAIT": "3", "AK_TEST__FAULTS": FAULTS}
    stack = start_stack(home, settings)
    triggers = "".join(TRIGGER.format(name=n, call=f"crash.py:{n}") for n in NAMES)
    triggers += "".join(TRIGGER.format(name=n, call=f"cases.py:{n}") for n in CASE_NAMES)
    triggers += TRIGGER.format(name="plain", call="cases.py:no_activity")
    triggers += "      is_durable: false\n"
    proj = write_project(
        home / "proj",
        {
            "autokitteh.yaml": MANIFEST.format(triggers=triggers),
            "crash.py": CRASH,
            "cases.py": CASES,
        },
    )
    paths = stack.deploy_paths(proj)
    try:
        yield stack, paths, markers
    finally:
        stack.stop()


def _fire(stack: Stack, path: str) -> str:
    status, headers, _ = stack.request("POST", path, b"{}")
    assert status == 202
    return stack.session_of("durable", headers["autokitteh-event-id"])


def _run(stack: Stack, path: str) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    sid = _fire(stack, path)
    session = stack.wait_session(sid, timeout=60)
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    log = [
        json.loads(x) for x in stack.ak("session", "log", sid, "-j", check=True).stdout.splitlines()
    ]
    return session, prints, log


def _calls(log: list[dict[str, Any]]) -> list[str]:
    return [e["call_spec"]["function"] for e in log if e["type"] == "call_spec"]


def _attempts(log: list[dict[str, Any]]) -> list[int]:
    return [
        e["state"]["running"]["attempt"]
        for e in log
        if e["type"] == "state" and "running" in e["state"]
    ]


def test_crash_during_durable_sleep(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, markers = env
    sid = _fire(stack, paths["crash_in_sleep"])  # its runner dies as the sleep is journaled
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    assert (markers / "a1").read_text() == "+"  # the activity ran exactly once
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    assert [p.split()[0] for p in prints] == ["first", "second", "woke"]  # each exactly once
    assert prints[0].split()[1] == prints[1].split()[1]  # the replay got the recorded number
    log = [
        json.loads(x) for x in stack.ak("session", "log", sid, "-j", check=True).stdout.splitlines()
    ]
    assert _attempts(log) == [1, 2]
    (sleep,) = [e["sleep"] for e in log if e["type"] == "sleep"]
    deadline = datetime.fromisoformat(sleep["until"].replace("Z", "+00:00")).timestamp()
    woke = float(prints[2].split()[1])
    (again,) = [
        e for e in log if e["type"] == "state" and e["state"].get("running", {}).get("attempt") == 2
    ]
    replayed = datetime.fromisoformat(again["t"].replace("Z", "+00:00")).timestamp()
    # The original deadline, not a new 4 s: at it, or as soon as the replay (its runner
    # replaced after the job's ack wait, later than the deadline on a loaded machine) saw it
    # had passed.
    assert deadline - 0.05 <= woke <= max(deadline, replayed) + 1.5
    assert woke < replayed + 4
    assert _calls(log) == ["draw", "time"]


def test_crash_between_activities(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, markers = env
    sid = _fire(stack, paths["crash_between"])  # its runner dies once step 1 is journaled
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    assert (markers / "a2").read_text() == "+"
    assert (markers / "b2").read_text() == "+"
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    assert [p.split()[0] for p in prints] == ["drew", "b"]


def test_crash_inside_activity_runs_it_again(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, markers = env
    sid = _fire(stack, paths["crash_inside"])  # dies before step 2's outcome is journaled
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    assert (markers / "a3").read_text() == "+"  # finished before the crash: exactly once
    assert (markers / "b3").read_text() == "++"  # in flight at the crash: once more
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    assert len(prints) == 1 and prints[0].startswith("slow done ")


def test_a_long_replay_reads_chunks_and_runs_each_activity_once(
    env: tuple[Stack, dict[str, str], Path],
) -> None:
    """600 activities journaled, then the runner dies: the next attempt reads most of the
    journal from its replay chunks (four of 128 records), replays all 600 and runs the
    last 10, each activity once."""
    stack, paths, markers = env
    sid = _fire(stack, paths["crash_late"])
    session = stack.wait_session(sid, timeout=90)
    assert session["state"] == "COMPLETED", session
    ticks = (markers / "ticks").read_text().split()
    assert sorted(map(int, ticks)) == list(range(610))  # each exactly once
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    assert prints == [f"total {sum(i * i for i in range(610))}"]
    records = stack.api("session.records", session=sid, kinds=["started"])["records"]
    second = records[1]["data"]
    assert second["attempt"] == 2 and second["replayed_steps"] == 600
    assert second["chunked"] == 512  # records 0-511 from four chunks, the rest one by one


def test_non_determinism_is_reported(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, markers = env
    sid = _fire(stack, paths["changes"])  # dies after step 1; the replay takes another path
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "ERROR"
    line = CRASH.splitlines().index('        print("other", random.random())') + 1
    assert session["error"].startswith(
        f"non-determinism at crash.py:{line}: step 1 of the journal is activity " + '"draw", '
        'but the code now asks for activity "random"'
    ), session["error"]
    assert (markers / "c1").read_text() == "+"


def test_nested_activity_and_interleaved_prints(env: tuple[Stack, dict[str, str], Path]) -> None:
    session, prints, log = _run(env[0], env[1]["nested_and_prints"])
    assert session["state"] == "COMPLETED"
    assert prints == ["START", "ACT", "END 3"]
    assert _calls(log) == ["outer"]  # random.random inside it is part of the one activity


def test_activity_exceptions(env: tuple[Stack, dict[str, str], Path]) -> None:
    session, prints, log = _run(env[0], env[1]["exceptions"])
    assert prints == ["caught Oops (1,)"]
    assert session["state"] == "ERROR" and session["error"] == "error: Oops(2)"
    completes = [e["call_attempt_complete"] for e in log if e["type"] == "call_attempt_complete"]
    assert [(c["ok"], c["error"]) for c in completes] == [(False, "Oops(1)"), (False, "Oops(2)")]


def test_big_ints_and_uuids(env: tuple[Stack, dict[str, str], Path]) -> None:
    session, prints, log = _run(env[0], env[1]["big_values"])
    assert prints == ["int True UUID 36"]
    assert _calls(log) == ["getrandbits", "uuid4"]


def test_unpicklable_result(env: tuple[Stack, dict[str, str], Path]) -> None:
    session, prints, _ = _run(env[0], env[1]["unpicklable"])
    assert session["state"] == "ERROR"
    assert "activity 'allocate_lock' returned a value that cannot be pickled" in session["error"]
    assert "@autokitteh.activity" in session["error"]
    assert any("cannot be pickled" in p for p in prints)


def test_async_handler_and_activity(env: tuple[Stack, dict[str, str], Path]) -> None:
    session, prints, log = _run(env[0], env[1]["on_http_start"])
    assert session["state"] == "COMPLETED"
    assert prints == ["START: post", "ACT", "END slept"]
    assert _calls(log) == ["act", "sleep"]  # asyncio.sleep is not durable: an activity


def test_register_no_activity(env: tuple[Stack, dict[str, str], Path]) -> None:
    session, _, log = _run(env[0], env[1]["no_activity"])
    assert session["state"] == "COMPLETED"
    assert _calls(log) == ["randrange"]


def test_inhibit_activities(env: tuple[Stack, dict[str, str], Path]) -> None:
    session, prints, log = _run(env[0], env[1]["inhibited"])
    assert prints == ["after True"]
    assert _calls(log) == ["random"]  # only the call outside the inhibited function


def test_durable_sleep_and_whole_handler_activity(env: tuple[Stack, dict[str, str], Path]) -> None:
    session, prints, log = _run(env[0], env[1]["sleeper"])
    assert prints == ["slept"] and [e["type"] for e in log].count("sleep") == 1
    session, prints, log = _run(env[0], env[1]["whole"])
    assert session["state"] == "COMPLETED" and prints == ["whole True"]
    assert _calls(log) == ["whole"]


def test_non_durable_trigger_has_no_activities(env: tuple[Stack, dict[str, str], Path]) -> None:
    session, _, log = _run(env[0], env[1]["plain"])
    assert session["state"] == "COMPLETED"
    assert _calls(log) == []


def test_unrestorable_exception_and_oversized_result(
    env: tuple[Stack, dict[str, str], Path],
) -> None:
    session, prints, _ = _run(env[0], env[1]["odd_errors"])
    assert prints[0] == "caught Picky 1"
    assert session["state"] == "ERROR"
    assert session["error"].startswith(
        "error: the result of activity 'huge' is 2097161 bytes, larger than the 1048576 byte limit"
    )


def test_a_forked_child_runs_outside_the_session(env: tuple[Stack, dict[str, str], Path]) -> None:
    """``os.fork()`` in a durable handler returns in two processes: the child runs plainly,
    outside the session (its system calls say they cannot; its steps and prints are not
    the session's), and the session goes on in the parent (the child's answer to the fork
    step ended the session as a malformed message)."""
    session, prints, log = _run(env[0], env[1]["forks"])
    assert session["state"] == "COMPLETED", session
    assert prints == ["before True", "child exited 7", "after True"]
    assert _calls(log) == ["random", "fork", "waitpid", "waitstatus_to_exitcode", "random"]
