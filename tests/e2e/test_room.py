"""A project whose sessions fill the shared journal stream loses its own sessions, not
every project's: the store ends the largest sessions of the largest holder, and the
others' sessions keep running (before, a full AK_JOURNAL stopped every session for good:
none could write its end, so no journal was purged)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.helpers import Stack, start_stack, write_project

HOG = """\
version: v1
project:
  name: hog
  triggers:
    - name: hook
      webhook: {}
      call: h.py:on_hook
"""

HOG_CODE = """\
import time

import autokitteh


@autokitteh.activity
def blob(i):
    return str(i) * 300_000


def on_hook(event):
    for i in range(3):
        blob(i)
    print("holding")
    time.sleep(3600)
"""

SMALL = """\
version: v1
project:
  name: small
  triggers:
    - name: hook
      webhook: {}
      call: s.py:on_hook
    - name: long
      webhook: {}
      call: s.py:long
"""

SMALL_CODE = """\
import time

import autokitteh


@autokitteh.activity
def step(n):
    return n + 1


def on_hook(event):
    print("small done", step(1))


def long(event):
    print("small holding", step(1))
    time.sleep(3600)
"""

# Children that write 0.9 MB of journal each and end: their journals are kept a while
# after (a child's parent may yet need to hear of its end from them).
KIDS = """\
version: v1
project:
  name: kids
  triggers:
    - name: hook
      webhook: {}
      call: k.py:fill
"""

KIDS_CODE = """\
import autokitteh


@autokitteh.activity
def blob(i):
    return str(i) * 300_000


def child(event):
    for i in range(3):
        blob(i)


def fill(event):
    for _ in range(4):
        autokitteh.start("k.py:child", {})
"""


def test_a_project_filling_the_journal_loses_its_own_sessions(tmp_path: Path) -> None:
    env = {"AK_RETENTION__JOURNAL_MAX_BYTES": "4MiB", "AK_RUNNER__JOURNAL_MAX_BYTES": "1048576"}
    stack = start_stack(tmp_path, env)
    try:
        _, hog = stack.deploy(
            write_project(tmp_path / "hog", {"autokitteh.yaml": HOG, "h.py": HOG_CODE})
        )
        paths = stack.deploy_paths(
            write_project(tmp_path / "small", {"autokitteh.yaml": SMALL, "s.py": SMALL_CODE})
        )
        small = paths["hook"]
        _, kids = stack.deploy(
            write_project(tmp_path / "kids", {"autokitteh.yaml": KIDS, "k.py": KIDS_CODE})
        )
        # A long session of another project, its journal small: never the one to end.
        holder = stack.session_of("small", stack.post_json(paths["long"], {})[1])
        stack.wait_until(
            lambda: "small holding" in stack.ak("session", "log", holder).stdout, "holding"
        )
        # 3.6 MB of journals of ended children: what they hold goes first.
        assert stack.request("POST", kids)[0] == 202
        stack.wait_until(
            lambda: "AK_JOURNAL nearly full: purged what" in stack.output(),
            "the ended children's journals purged",
            timeout=60,
        )
        assert "small" not in _ended_projects(stack)
        for _ in range(8):  # 8 x 0.9 MB of journal: twice what AK_JOURNAL may hold
            assert stack.request("POST", hog)[0] == 202
        stack.wait_until(lambda: "full and it held" in stack.output(), "the store making room")
        accepted = set()
        for _ in range(3):
            status, event_id = stack.post_json(small, {})
            assert status == 202
            accepted.add(event_id)
        # The other project's sessions run to their end.
        done = stack.sessions_of_events("small", accepted, timeout=60)
        assert sorted(s["event_id"] for s in done) == sorted(accepted)
        # The hog's sessions ended by it say why, and none of them is stuck: it comes to
        # rest with each either ended so or holding its journal (printed "holding").
        hogs: list[dict[str, str]] = []
        ended: list[dict[str, str]] = []

        def at_rest() -> bool:
            out = stack.ak("session", "list", "-p", "hog", "-j", check=True).stdout
            hogs[:] = [json.loads(line) for line in out.splitlines()]
            ended[:] = [s for s in hogs if s["state"] == "ERROR"]
            holding = [
                s
                for s in hogs
                if s["state"] == "RUNNING"
                and "holding" in stack.ak("session", "log", s["session_id"]).stdout
            ]
            return len(ended) + len(holding) == 8

        stack.wait_until(at_rest, "every hog session ended or holding its journal", timeout=90)
        # 8 x 0.9 MB, ended until 2 MiB of the 4 are left: not every session
        assert 2 <= len(ended) <= 7, hogs
        got = stack.ak("session", "get", ended[0]["session_id"], "-j", check=True).stdout
        error = json.loads(got)["error"]
        assert "AK_JOURNAL held" in error and "of its 4.0 MiB" in error, error
        assert "it was ended to make room for every project's sessions" in error, error
        assert "AK_RETENTION__JOURNAL_MAX_BYTES" in error, error
        # The room stays: more of the small project's sessions run.
        status, event_id = stack.post_json(small, {})
        assert stack.sessions_of_events("small", {event_id}, timeout=60)
        # Every session the store ended lost its worker (its runner was told, or fenced).
        stack.wait_until(
            lambda: stack.output().count("attempt 1 stops") >= len(ended),
            "the ended sessions' attempts to stop",
        )
        assert _ended_projects(stack) == {"hog"}
        assert json.loads(stack.ak("session", "get", holder, "-j").stdout)["state"] == "RUNNING"
    finally:
        stack.stop()


def _ended_projects(stack: Stack) -> set[str]:
    """The projects of the sessions the store ended to make room (from its log)."""
    ids = set(re.findall(r"ak_store.room: session \S+ of project (\S+) ended", stack.output()))
    names = {}
    for line in stack.ak("project", "list", "-j", check=True).stdout.splitlines():
        project = json.loads(line)
        names[project["project_id"]] = project["name"]
    return {names.get(i, i) for i in ids}


DEAF = """\
version: v1
project:
  name: deaf
  triggers:
    - name: start
      webhook: {}
      call: d.py:deaf
    - name: feed
      webhook: {}
"""

DEAF_CODE = """\
import time

import autokitteh


def deaf(event):
    autokitteh.subscribe("feed")  # and never reads it
    print("subscribed")
    time.sleep(3600)
"""

EAR = """\
version: v1
project:
  name: ear
  triggers:
    - name: start
      webhook: {}
      call: e.py:ear
    - name: slow
      webhook: {}
      call: e.py:slow
    - name: feed
      webhook: {}
"""

EAR_CODE = """\
import time

import autokitteh


def slow(event):
    autokitteh.subscribe("feed")
    print("busy")
    time.sleep(3600)  # its (small) events wait meanwhile


def ear(event):
    sub = autokitteh.subscribe("feed")
    print("listening")
    got = autokitteh.next_event(sub, timeout=120)
    print("heard", got.body.json["n"])
"""


def test_a_session_that_never_reads_its_events_is_ended_when_the_inbox_fills(
    tmp_path: Path,
) -> None:
    """A subscriber that never reads keeps a copy of each event in the shared AK_INBOX: a
    flood of its webhook used to fill it for every session (events, signals and stop
    requests refused for good)."""
    stack = start_stack(tmp_path, {"AK_RETENTION__JOURNAL_MAX_BYTES": "4MiB"})
    try:
        deaf = stack.deploy_paths(
            write_project(tmp_path / "deaf", {"autokitteh.yaml": DEAF, "d.py": DEAF_CODE})
        )
        ear = stack.deploy_paths(
            write_project(tmp_path / "ear", {"autokitteh.yaml": EAR, "e.py": EAR_CODE})
        )
        # A busy session of another project, with many small events waiting for it: it
        # holds more messages than the flooded one, but far fewer bytes.
        busy = stack.session_of("ear", stack.post_json(ear["slow"], {})[1])
        stack.wait_until(lambda: "busy" in stack.ak("session", "log", busy).stdout, "busy")
        for i in range(100):
            assert stack.post_json(ear["feed"], {"i": i})[0] == 202
        status, deaf_event = stack.post_json(deaf["start"], {})
        deaf_session = stack.session_of("deaf", deaf_event)
        stack.wait_until(
            lambda: "subscribed" in stack.ak("session", "log", deaf_session).stdout, "subscribed"
        )
        body = json.dumps({"pad": "x" * 400_000}).encode()
        for _ in range(12):  # 12 x 0.4 MB into its inbox: more than AK_INBOX may hold
            assert stack.request("POST", deaf["feed"], body)[0] == 202
        stack.wait_until(lambda: "AK_INBOX was" in stack.output(), "the store making room")
        got = json.loads(stack.ak("session", "get", deaf_session, "-j", check=True).stdout)
        assert got["state"] == "ERROR", got
        assert "inbox (events not read yet) held" in got["error"], got["error"]
        assert json.loads(stack.ak("session", "get", busy, "-j").stdout)["state"] == "RUNNING"
        # Another project's subscriber hears its event.
        status, ear_event = stack.post_json(ear["start"], {})
        ear_session = stack.session_of("ear", ear_event)
        stack.wait_until(
            lambda: "listening" in stack.ak("session", "log", ear_session).stdout, "listening"
        )
        assert stack.post_json(ear["feed"], {"n": 5})[0] == 202
        assert stack.wait_session(ear_session, timeout=60)["state"] == "COMPLETED"
        assert "heard 5" in stack.ak("session", "log", ear_session).stdout
    finally:
        stack.stop()
