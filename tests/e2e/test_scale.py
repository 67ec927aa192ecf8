"""Scale-out with real processes: two of every service on PostgreSQL, and what survives the
loss of a runner, a dispatcher or the stores."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import Stack, start_stack, write_project
from tests.pg import fresh_database

MANIFEST = """\
version: v1
project:
  name: scaled
  triggers:
    - name: quick
      webhook: {}
      call: h.py:quick
    - name: slow
      webhook: {}
      call: h.py:slow
    - name: talk
      webhook: {}
      call: h.py:talk
"""

CODE = """\
import os
import time


def quick(event):
    print("n", event.data.body.json["n"])


def slow(event):
    print("begin")
    open(os.path.join(os.environ["MARKER_DIR"], "slow"), "a").write("x")
    time.sleep(3)
    print("end")


def talk(event):
    for i in range(30):
        print("line", i)
        time.sleep(0.1)
"""

COUNTS = ("--runners", "2", "--dispatchers", "2", "--ingresses", "2", "--stores", "2")


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str]]]:
    home = tmp_path_factory.mktemp("scaled")
    with fresh_database() as dsn:
        stack = start_stack(
            home,
            {
                "AK_DB__DSN": dsn,
                "AK_JOBS__ACK_WAIT": "3",
                "MARKER_DIR": str(home),
                # the runner of h.py:slow dies once the marker's write (step 1) is journaled
                "AK_TEST__FAULTS": "crash journaled step=1 entry=h.py:slow",
            },
            args=COUNTS,
        )
        try:
            proj = write_project(home / "p", {"autokitteh.yaml": MANIFEST, "h.py": CODE})
            yield stack, stack.deploy_paths(proj)
        finally:
            stack.stop()


def _fire(stack: Stack, path: str, n: int) -> str:
    status, event = stack.post_json(path, {"n": n})
    assert status == 202, status
    return event


def test_two_of_each_service_run_each_event_once(scaled: tuple[Stack, dict[str, str]]) -> None:
    stack, paths = scaled
    assert "(ingress x2, dispatcher x2, runner x2, store x2)" in stack.output()
    for service in ("ingress", "dispatcher", "runner", "store"):
        assert len(stack.pids(service)) == 2, service
    # `ak up` is ready once one of each answers: both runners take jobs once both are ready
    # (each tries hiding /run in a process of its own first, which one may do later)
    stack.wait_until(lambda: len(re.findall(r"runner \S+ ready", stack.output())) >= 2, "runners")
    with ThreadPoolExecutor(8) as pool:
        events = set(pool.map(lambda n: _fire(stack, paths["quick"], n), range(40)))
    assert len(events) == 40
    sessions = stack.sessions_of_events("scaled", events)
    assert sorted(s["event_id"] for s in sessions) == sorted(events)  # exactly one each
    # Both runners took part.
    runners = set()
    for s in sessions[:20]:
        log = stack.ak("session", "log", s["session_id"], "-j", check=True).stdout
        for rec in map(json.loads, log.splitlines()):
            runners.add(rec.get("state", {}).get("running", {}).get("runner"))
    assert len(runners - {None}) == 2


def test_a_killed_dispatcher_skips_and_doubles_nothing(
    scaled: tuple[Stack, dict[str, str]],
) -> None:
    stack, paths = scaled
    victim = stack.pids("dispatcher")[0]
    events: set[str] = set()

    def load() -> None:
        for n in range(40):
            events.add(_fire(stack, paths["quick"], 1000 + n))
            time.sleep(0.02)

    t = threading.Thread(target=load)
    t.start()
    while len(events) < 10:
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)
    t.join()
    sessions = stack.sessions_of_events("scaled", events)
    assert sorted(s["event_id"] for s in sessions) == sorted(events)


def test_a_killed_runner_session_is_finished_by_another(
    scaled: tuple[Stack, dict[str, str]],
) -> None:
    stack, paths = scaled
    marker = Path(stack.env["MARKER_DIR"]) / "slow"
    sid = stack.session_of("scaled", _fire(stack, paths["slow"], 0))  # its runner dies
    assert stack.wait_session(sid, timeout=60)["state"] == "COMPLETED"
    log = stack.ak("session", "log", sid, "-j", check=True).stdout
    runs = [
        r["state"]["running"]
        for r in map(json.loads, log.splitlines())
        if "running" in r.get("state", {})
    ]
    assert [r["attempt"] for r in runs] == [1, 2]
    assert runs[1]["runner"] != runs[0]["runner"]
    assert marker.read_text() == "x"  # the write ran once
    assert stack.ak("session", "prints", sid, "-n", check=True).stdout == "begin\nend\n"


def test_stores_stopped_for_a_while_catch_up(scaled: tuple[Stack, dict[str, str]]) -> None:
    stack, paths = scaled
    event = _fire(stack, paths["talk"], 0)
    sid = stack.session_of("scaled", event)
    stack.wait_output("line 0", "session", "prints", sid)
    stores = stack.pids("store")
    for pid in stores:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(4)  # the session goes on; its journal records wait in JetStream
    finally:
        for pid in stores:
            os.kill(pid, signal.SIGCONT)
    assert stack.wait_session(sid, timeout=60)["state"] == "COMPLETED"
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout
    assert prints == "".join(f"line {i}\n" for i in range(30))


CONCURRENCY_CODE = """\
import time


def hold(event):
    time.sleep(1)
"""


def test_a_runner_holds_at_most_its_concurrency(tmp_path: Path) -> None:
    stack = start_stack(tmp_path / "home", {"AK_RUNNER__CONCURRENCY": "2"})
    try:
        # Not durable: its sleep keeps it running (a durable one would make it wait).
        manifest = MANIFEST.replace("name: scaled", "name: capped").replace(
            "call: h.py:quick", "call: h.py:hold\n      is_durable: false"
        )
        proj = write_project(
            tmp_path / "p", {"autokitteh.yaml": manifest, "h.py": CONCURRENCY_CODE}
        )
        path = stack.deploy_paths(proj)["quick"]
        for _ in range(5):
            assert stack.request("POST", path, b"{}")[0] == 202
        most, deadline = 0, time.monotonic() + 30
        while True:
            states = [
                json.loads(x)["state"]
                for x in stack.ak("session", "list", "-p", "capped", "-j").stdout.splitlines()
            ]
            most = max(most, states.count("RUNNING"))
            if states.count("COMPLETED") == 5:
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.1)
        assert most == 2  # the other jobs waited in JetStream
    finally:
        stack.stop()


WAITING_CODE = """\
import time

import autokitteh


def nap(event):
    time.sleep(60)


def listen(event):
    sub = autokitteh.subscribe("talk")  # not fired again
    autokitteh.next_event(sub, timeout=60)


def quick(event):
    print("quick done")
"""


def test_waiting_sessions_leave_room_for_running_ones(tmp_path: Path) -> None:
    """Sessions in a durable sleep or waiting for an event do not count against the
    sessions a runner runs at once (2 here); a runner holds at most that many plus
    AK_RUNNER__MAX_WAITING (2 here) sessions in all."""
    # (parking off: parked sessions would leave room, and this is the bound of the unparked)
    env = {
        "AK_RUNNER__CONCURRENCY": "2",
        "AK_RUNNER__MAX_WAITING": "2",
        "AK_RUNNER__PARK_AFTER": "off",
    }
    stack = start_stack(tmp_path / "home", env)
    try:
        manifest = (
            MANIFEST.replace("name: scaled", "name: waiting")
            .replace("call: h.py:slow", "call: h.py:nap")
            .replace("call: h.py:talk", "call: h.py:listen")
        )
        proj = write_project(tmp_path / "p", {"autokitteh.yaml": manifest, "h.py": WAITING_CODE})
        paths = stack.deploy_paths(proj)

        def start(name: str) -> str:
            return stack.session_of("waiting", stack.post_json(paths[name], {})[1])

        def state(sid: str) -> str:
            return str(
                json.loads(stack.ak("session", "get", sid, "-j", check=True).stdout)["state"]
            )

        def until_running(sid: str) -> None:
            deadline = time.monotonic() + 30
            while state(sid) != "RUNNING":
                assert time.monotonic() < deadline, stack.output()[-3000:]
                time.sleep(0.2)

        waiting = [start("slow"), start("slow"), start("talk")]
        for sid in waiting:
            until_running(sid)
        for sid in (start("quick"), start("quick")):
            assert stack.wait_session(sid, timeout=30)["state"] == "COMPLETED"
        waiting.append(start("slow"))
        until_running(waiting[-1])
        held = start("quick")  # 4 sessions held: no room until one ends
        time.sleep(2)
        assert state(held) == "CREATED"
        stack.ak("session", "stop", waiting[0], check=True)
        assert stack.wait_session(held, timeout=30)["state"] == "COMPLETED"
    finally:
        stack.stop()
