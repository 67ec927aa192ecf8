"""NATS (or the KV bucket) failing for a moment while a session parks: the runner's fault
hook ``unavailable`` makes the attempt fail as when NATS is away, right after the `parked`
record (before the AK_PARKED put) or right after the put (before the ack). The attempt
journals nothing after its `parked` record and naks its job; the session still resumes and
completes, each activity once (a `retry` record written after the `parked` one made every
later job of the session look stale: it stayed RUNNING for ever)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Stack, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: unavail
  triggers:
    - name: at_parked
      call: f.py:at_parked
      webhook: {}
    - name: at_registered
      call: f.py:at_registered
      webhook: {}
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


def at_parked(event, session_id):
    effect(session_id, "a1")
    time.sleep(4)
    effect(session_id, "a2")


def at_registered(event, session_id):
    effect(session_id, "a1")
    time.sleep(4)
    effect(session_id, "a2")
"""

FAULTS = "unavailable parked entry=f.py:at_parked; unavailable registered entry=f.py:at_registered"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str], Path]]:
    home = tmp_path_factory.mktemp("unavail")
    markers = home / "markers"
    markers.mkdir()
    settings = {
        "MARKER_DIR": str(markers),
        "AK_JOBS__ACK_WAIT": "3",
        "AK_RUNNER__PARK_AFTER": "1",
        "AK_TEST__FAULTS": FAULTS,
    }
    stack = start_stack(home, settings)
    proj = write_project(home / "proj", {"autokitteh.yaml": MANIFEST, "f.py": CODE})
    try:
        yield stack, stack.deploy_paths(proj), markers
    finally:
        stack.stop()


@pytest.mark.parametrize("handler", ["at_parked", "at_registered"])
def test_a_park_that_fails_for_a_moment_loses_nothing(
    env: tuple[Stack, dict[str, str], Path], handler: str
) -> None:
    stack, paths, markers = env
    status, headers, _ = stack.request("POST", paths[handler], b"{}")
    assert status == 202
    sid = stack.session_of("unavail", headers["autokitteh-event-id"])
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", json.dumps(session)
    for name in ("a1", "a2"):
        assert len((markers / f"{sid}.{name}").read_text().split()) == 1, name
