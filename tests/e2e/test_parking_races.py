"""Parking against a runner that freezes while it parks: two runners, two dispatchers (two
wakers), parking after 1 s, a 3 s ack wait; the freeze comes from the runner's fault hook
(AK_TEST__FAULTS)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Stack, start_stack, wait_until, write_project

MANIFEST = """\
version: v1
project:
  name: review2
  triggers:
{triggers}
"""

CODE = """\
import os
import time

import autokitteh

DIR = os.environ["MARKER_DIR"]


@autokitteh.activity
def effect(sid, name):
    with open(os.path.join(DIR, f"{sid}.{name}"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    return os.getpid()


def stale_register(event, session_id):
    effect(session_id, "a1")
    time.sleep(4)
    effect(session_id, "a2")
    time.sleep(3600)
    effect(session_id, "a3")
"""

HANDLERS = ["stale_register"]
# The first attempt of stale_register freezes its runner's loop right after its `parked`
# record (as a SIGSTOP or a long GC pause would), before it puts its AK_PARKED entry.
FAULTS = "stall=25 parked entry=f.py:stale_register"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str], Path]]:
    home = tmp_path_factory.mktemp("review2")
    markers = home / "markers"
    markers.mkdir()
    settings = {
        "MARKER_DIR": str(markers),
        "AK_JOBS__ACK_WAIT": "3",
        "AK_RUNNER__PARK_AFTER": "1",
        "AK_TEST__FAULTS": FAULTS,
    }
    stack = start_stack(home, settings, ("--runners", "2", "--dispatchers", "2"))
    triggers = "".join(
        f"    - name: {h}\n      call: f.py:{h}\n      webhook: {{}}\n" for h in HANDLERS
    )
    proj = write_project(
        home / "proj", {"autokitteh.yaml": MANIFEST.format(triggers=triggers), "f.py": CODE}
    )
    try:
        yield stack, stack.deploy_paths(proj), markers
    finally:
        stack.stop()


def _fire(stack: Stack, path: str) -> str:
    status, headers, _ = stack.request("POST", path, b"{}")
    assert status == 202
    return stack.session_of("review2", headers["autokitteh-event-id"])


def _log(stack: Stack, sid: str) -> list[dict[str, Any]]:
    out = stack.ak("session", "log", sid, "-j", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def _parked(stack: Stack, sid: str) -> list[dict[str, Any]]:
    return [e["parked"] for e in _log(stack, sid) if e["type"] == "parked"]


def _runs(markers: Path, sid: str, name: str) -> list[int]:
    path = markers / f"{sid}.{name}"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_a_runner_thawing_mid_park_does_not_unpark_a_later_parking(
    env: tuple[Stack, dict[str, str], Path],
) -> None:
    """Runner A parks the session (record s1) and freezes before its AK_PARKED put. Its job
    goes to runner B, which finds the journal parked and puts the entry itself; the waker
    wakes the session at its deadline, B resumes it and it parks again (record s2, an hour's
    sleep). Then A thaws: it must not put its s1 entry over the s2 one (the waker would wake
    s1, a duplicate wake job JetStream drops, and delete the entry: the session would stay
    RUNNING, for an hour or for ever). The session still stops when asked."""
    stack, paths, markers = env
    sid = _fire(stack, paths["stale_register"])
    wait_until(lambda: len(_parked(stack, sid)) >= 2, f"{sid} parked twice", 60)
    marker = f"session {sid}: parked in step"
    wait_until(lambda: stack.output().count(marker) >= 1, "the second parking", 60)
    # The frozen runner thaws: it finds its job gone and puts nothing over the later entry.
    wait_until(
        lambda: f"session {sid}: attempt 1 stops: it lost its job while parking" in stack.output(),
        "the frozen runner thawed",
        60,
    )
    stack.ak("session", "stop", sid, "--reason", "enough", check=True)
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "STOPPED", session
    assert len(_runs(markers, sid, "a1")) == 1 and len(_runs(markers, sid, "a2")) == 1
