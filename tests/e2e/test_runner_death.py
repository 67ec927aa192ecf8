"""A runner killed mid-session: the supervisor restarts it and the session still ends."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: slow
  triggers:
    - name: hook
      call: slow.py:run
      webhook: {}
"""

CODE = """\
import os
import time


def run(event):
    print("begin")
    marker = os.path.join(os.environ["MARKER_DIR"], "started")
    open(marker, "a").write("x")
    time.sleep(float(os.environ.get("SLOW_SECONDS", "3")))
    print("end")
"""


def test_session_survives_runner_kill(tmp_path: Path) -> None:
    # The runner dies as the marker's write (step 1) is journaled (its test hook).
    faults = "crash journaled step=1 entry=slow.py:run"
    settings = {
        "MARKER_DIR": str(tmp_path),
        "SLOW_SECONDS": "2",
        "AK_TEST__FAULTS": faults,
        "AK_JOBS__ACK_WAIT": "3",  # the killed runner's job comes back after 3 s, not 15
    }
    stack = start_stack(tmp_path, settings)
    try:
        proj = write_project(tmp_path / "p", {"autokitteh.yaml": MANIFEST, "slow.py": CODE})
        _, path = stack.deploy(proj)
        assert stack.request("POST", path)[0] == 202
        marker = tmp_path / "started"
        session = stack.wait_session("slow", timeout=60)
        assert session["state"] == "COMPLETED"
        # One clear line says the runner was killed; nothing (its fork server) adds a
        # traceback.
        assert "[ak] runner killed by SIGKILL" in stack.output()
        assert "Traceback" not in stack.output()
        assert marker.read_text() == "x"  # the write was an activity: replayed, not repeated
        log = [
            json.loads(x)
            for x in stack.ak("session", "log", "slow", "-j", check=True).stdout.splitlines()
        ]
        attempts = [
            r["state"]["running"]["attempt"] for r in log if "running" in r.get("state", {})
        ]
        assert attempts == [1, 2]
        assert stack.ak("session", "prints", "slow", "-n", check=True).stdout.endswith(
            "begin\nend\n"
        )
        # The replay continues the webhook's trace; the new attempt says so.
        deadline = time.monotonic() + 10
        while True:
            spans = stack.spans("slow")
            replayed = [
                s
                for s in spans
                if s["name"] == "session slow.py:run" and s["attributes"]["ak.attempt"] == 2
            ]
            if replayed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(replayed) == 1, spans
        assert [e["name"] for e in replayed[0]["events"]] == ["replay"]
        assert len({s["trace_id"] for s in spans}) == 1
        assert any(s["name"] == "POST /webhooks/{slug}" for s in spans)
    finally:
        stack.stop()


ACTIVITY = """\
import os
import time

from autokitteh import activity


@activity
def work():
    folder = os.environ["MARKER_DIR"]
    open(os.path.join(folder, "started"), "a").write("x")
    # Runs until the test lets it end: its first attempt is always stopped mid-activity.
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(folder, "release")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return 1


def run(event):
    work()
    print("done")
"""


@pytest.mark.parametrize("how", ["runner SIGTERM", "ak up Ctrl-C", "ak up SIGKILL"])
def test_a_stopped_runner_leaves_its_sessions_to_the_next(tmp_path: Path, how: str) -> None:
    """A runner told to stop (a rolling restart; `ak up` stopped, or killed: its services
    end with it) leaves the sessions it runs to the next runner, which resumes them by
    replay. They ended in ERROR: the conversation with the worker outlived the cancelled
    attempt and took the worker's death for the handler's."""
    from ak_cli.up import LOCK_FILE, _holders

    settings = {"MARKER_DIR": str(tmp_path), "AK_JOBS__ACK_WAIT": "3"}
    stack = start_stack(tmp_path, settings)
    try:
        proj = write_project(tmp_path / "p", {"autokitteh.yaml": MANIFEST, "slow.py": ACTIVITY})
        _, path = stack.deploy(proj)
        assert stack.request("POST", path)[0] == 202
        stack.wait_until(lambda: (tmp_path / "started").exists(), "the activity to start")
        if how == "runner SIGTERM":  # `ak up` starts another
            (old,) = stack.pids("runner")
            os.kill(old, signal.SIGTERM)
            stack.wait_until(lambda: stack.pids("runner") not in ([], [old]), "a new runner")
        else:
            os.kill(stack.proc.pid, signal.SIGINT if how == "ak up Ctrl-C" else signal.SIGKILL)
            stack.proc.wait()
            lock = Path(stack.env["XDG_DATA_HOME"]) / "autokitteh" / LOCK_FILE
            stack.wait_until(lambda: not _holders(lock), "the services to end")
            stack = start_stack(tmp_path, settings)  # the same data home
        (tmp_path / "release").touch()  # the first attempt is gone: the next one may end
        session = stack.wait_session("slow", timeout=90)
        assert session["state"] == "COMPLETED", session.get("error")
        assert stack.ak("session", "prints", "slow", "-n", check=True).stdout == "done\n"
        # In flight when its attempt stopped, the activity ran again in the next, once.
        assert (tmp_path / "started").read_text() == "xx"
    finally:
        stack.stop()
