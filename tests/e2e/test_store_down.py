"""Webhooks of known triggers are accepted while the store is down (on their last known
lookup), also by an ingress restarted meanwhile; each such event runs its session once the
store is back, exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import Stack, stopped, write_project

MANIFEST = """\
version: v1
project:
  name: patient
  triggers:
    - name: hook
      webhook: {}
      call: h.py:on_hook
"""

CODE = """\
def on_hook(event):
    print("n", event.data.body.json["n"])
"""


@pytest.fixture(scope="module")
def hook(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The webhook's path, called once so that ingress has looked it up."""
    proj = write_project(
        tmp_path_factory.mktemp("patient"), {"autokitteh.yaml": MANIFEST, "h.py": CODE}
    )
    _, path = stack.deploy(proj)
    status, event = stack.post_json(path, {"n": 0})
    assert status == 202
    _exactly_once(stack, {event})
    return path


def _exactly_once(stack: Stack, events: set[str]) -> None:
    sessions = stack.sessions_of_events("patient", events, timeout=60)
    assert sorted(s["event_id"] for s in sessions) == sorted(events)
    assert all(s["state"] == "COMPLETED" for s in sessions)


def _state(pid: int) -> str:
    """The process's state letter (``T`` stopped, ``Z`` dead and not reaped), "" if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))


def _pids(stack: Stack, service: str) -> list[int]:
    """The live processes of one service (a killed one may be gone while this looks)."""
    out = subprocess.run(["pgrep", "-P", str(stack.proc.pid)], capture_output=True, text=True)
    found = []
    for pid in map(int, out.stdout.split()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"ak_{service}".encode() in cmdline:
            found.append(pid)
    return found


def _wait(what: str, cond: Callable[[], object], stack: Stack, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}:\n{stack.output()[-3000:]}"
        time.sleep(0.05)


@pytest.fixture
def frozen(stack: Stack) -> Iterator[list[int]]:
    """Processes a test stops with SIGSTOP: continued however the test ends."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_store_killed(stack: Stack, hook: str, frozen: list[int]) -> None:
    """The store killed, with `ak up` stopped so that it cannot restart it yet."""
    _wait("no store", lambda: _pids(stack, "store"), stack)
    store = _pids(stack, "store")
    # A change makes ingress forget the answers it keeps for a few seconds: what it has
    # left is the last known lookup.
    stack.ak("var", "set", "-p", "patient", "X", "1", check=True)
    frozen.append(stack.proc.pid)
    os.kill(stack.proc.pid, signal.SIGSTOP)
    for pid in store:
        os.kill(pid, signal.SIGKILL)
    _wait("store still running", lambda: all(_state(p) in ("Z", "") for p in store), stack)
    events = set()
    for n in (1, 2, 3):
        status, event = stack.post_json(hook, {"n": n})
        assert status == 202, status
        events.add(event)
    status, _ = stack.post_json("/webhooks/aaaaaaaaaaaaaaaaaaaaaaaaaa", {"n": 4})
    assert status == 503  # not 404: without the store, nobody knows
    os.kill(stack.proc.pid, signal.SIGCONT)  # `ak up` restarts the store at once
    _exactly_once(stack, events)


def test_ingress_restarted_while_the_store_is_down(
    stack: Stack, hook: str, frozen: list[int]
) -> None:
    """The store stopped (SIGSTOP: `ak up` does not see it), ingress killed and restarted:
    the new ingress reads the last known lookups from the bucket."""
    _wait("no store", lambda: _pids(stack, "store"), stack)
    store = _pids(stack, "store")
    frozen.extend(store)
    for pid in store:
        os.kill(pid, signal.SIGSTOP)
    _wait("store not stopped", lambda: all(stopped(p) for p in store), stack)
    (ingress,) = _pids(stack, "ingress")
    os.kill(ingress, signal.SIGKILL)
    _wait("no new ingress", lambda: [p for p in _pids(stack, "ingress") if p != ingress], stack)
    _wait("ingress not serving", lambda: _healthy(stack), stack)
    status, event = stack.post_json(hook, {"n": 5})
    assert status == 202, status
    for pid in store:
        os.kill(pid, signal.SIGCONT)
    _exactly_once(stack, {event})


def _healthy(stack: Stack) -> bool:
    try:
        return stack.request("GET", "/healthz")[0] == 200
    except OSError:
        return False


CALLER = """\
version: v2
project:
  name: caller
  triggers:
    - name: call
      webhook: {}
      call: c.py:call
"""

CALLER_CODE = """\
import os
import time

import autokitteh


def call(event):
    go = event.data.body.json["go"]
    print("waiting")
    while not os.path.exists(go):
        time.sleep(0.05)
    sub = autokitteh.subscribe("call", "true")
    print("subscribed", bool(sub))
"""


def test_a_system_call_waits_for_the_store(
    stack: Stack, frozen: list[int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The store away (frozen) as a handler's system call asks it: the call waits for it,
    and the session goes on when it is back (the store's absence is not the handler's
    error: it ended the session in ERROR, the error journaled as the call's result)."""
    proj = write_project(
        tmp_path_factory.mktemp("caller"), {"autokitteh.yaml": CALLER, "c.py": CALLER_CODE}
    )
    _, path = stack.deploy(proj)
    folder = Path(tempfile.mkdtemp(prefix="ak-go-"))  # (the worker's user reads it)
    folder.chmod(0o755)
    go = folder / "go"
    status, event = stack.post_json(path, {"go": str(go)})
    assert status == 202
    _wait("no session", lambda: _session_of(stack, event), stack)
    sid = _session_of(stack, event)["session_id"]
    _wait("no first print", lambda: "waiting" in _prints(stack, sid), stack)
    store = _pids(stack, "store")
    frozen.extend(store)
    for pid in store:
        os.kill(pid, signal.SIGSTOP)
    _wait("store not stopped", lambda: all(stopped(p) for p in store), stack)
    seen = len(stack.output())
    go.write_text("")
    _wait(
        "the call not waiting for the store",
        lambda: "subscribe: store did not answer" in stack.output()[seen:],
        stack,
        timeout=60,
    )
    for pid in store:
        os.kill(pid, signal.SIGCONT)
    ended = ("COMPLETED", "ERROR", "STOPPED")
    _wait("not ended", lambda: _session_of(stack, event).get("state") in ended, stack, 60)
    done = _session_of(stack, event)
    assert done["state"] == "COMPLETED", done
    assert _prints(stack, sid) == ["waiting", "subscribed True"]


def _prints(stack: Stack, sid: str) -> list[str]:
    res = stack.ak("session", "prints", sid, "-n")
    return res.stdout.splitlines() if res.returncode == 0 else []


def _session_of(stack: Stack, event: str) -> dict[str, str]:
    res = stack.ak("session", "list", "-p", "caller", "-j")
    found = [x for x in map(json.loads, res.stdout.splitlines()) if x["event_id"] == event]
    return found[0] if found else {}
