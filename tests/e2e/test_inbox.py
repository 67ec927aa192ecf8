"""Inboxes are read only when needed: a stop sent to a session that is still queued must
reach it when it starts (the runner's inbox watch heard of it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ak_runner.inbox import InboxWatch

from tests.helpers import start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: queue
  triggers:
    - name: hold
      call: q.py:hold
      webhook: {}
    - name: later
      call: q.py:later
      webhook: {}
"""

CODE = """\
import time

import autokitteh


def hold(event):
    print("holding")
    autokitteh.next_signal("never", timeout=120)


def later(event):
    time.sleep(5)
    print("ran")
"""


def test_a_stop_sent_while_queued_stops_the_session_when_it_starts(tmp_path: Path) -> None:
    # One place, and none for waiting sessions: the holder waits in the only one.
    # (parking off: the holder must keep its place however long the machine takes)
    settings = {
        "AK_RUNNER__CONCURRENCY": "1",
        "AK_RUNNER__MAX_WAITING": "0",
        "AK_RUNNER__PARK_AFTER": "off",
    }
    stack = start_stack(tmp_path, settings)
    try:
        proj = write_project(tmp_path / "p", {"autokitteh.yaml": MANIFEST, "q.py": CODE})
        paths = stack.deploy_paths(proj)
        holder = stack.session_of("queue", stack.post_json(paths["hold"], {})[1])
        stack.wait_output("holding", "session", "prints", holder)
        # Past the runner's allowance for clock skew, so that the queued session counts as
        # fresh there: only its inbox watch can know that a stop was sent.
        time.sleep(InboxWatch.SKEW + 1)
        queued = stack.session_of("queue", stack.post_json(paths["later"], {})[1])
        got = json.loads(stack.ak("session", "get", queued, "-j", check=True).stdout)
        assert got["state"] == "CREATED"  # the only runner slot is taken
        stack.ak("session", "stop", queued, "--reason", "not needed", check=True)
        stack.ak("session", "stop", holder, check=True)
        assert stack.wait_session(holder)["state"] == "STOPPED"
        assert stack.wait_session(queued)["state"] == "STOPPED"
        prints = stack.ak("session", "prints", queued, check=True).stdout
        assert "ran" not in prints
    finally:
        stack.stop()
