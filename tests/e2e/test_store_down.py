"""Webhooks of known triggers are accepted while the store is down (on their last known
lookup), also by an ingress restarted meanwhile; each such event runs its session once the
store is back, exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import Stack, write_project

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
    _wait("store not stopped", lambda: all(_state(p) == "T" for p in store), stack)
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
