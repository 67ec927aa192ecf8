"""A full event stream refuses webhooks with 503 (never a 202 for an event it drops), and
takes them again once space returns; every accepted event still runs its session."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

from akcore import bus, subjects
from akcore.natsauth import inbox_prefix

from tests.helpers import AK, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: full
  triggers:
    - name: hook
      webhook: {}
      call: h.py:on_hook
"""

CODE = """\
def on_hook(event):
    print("got", len(event.data.body.bytes))
"""


def test_a_full_event_stream_answers_503_and_recovers(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, {"AK_RETENTION__EVENTS_MAX_BYTES": "48KiB"})
    try:
        proj = write_project(tmp_path / "p", {"autokitteh.yaml": MANIFEST, "h.py": CODE})
        _, path = stack.deploy(proj)
        body = b"x" * 2000
        accepted: set[str] = set()
        for _ in range(200):
            status, headers, text = stack.request("POST", path, body)
            if status != 202:
                break
            accepted.add(headers["autokitteh-event-id"])
        assert status == 503, "the stream never filled up"
        assert b"the event stream is full" in text and headers.get("retry-after") == "10"
        assert 5 <= len(accepted) < 200
        # A hand-made event is refused the same way (it was an internal error).
        listed = stack.ak("trigger", "list", "-p", "full", "-j", check=True).stdout
        (trigger,) = [json.loads(line) for line in listed.splitlines()]
        ev_file = tmp_path / "ev.json"
        big = {"x": "y" * 4000}  # (the last webhook's 2,000 bytes did not fit)
        ev_file.write_text(json.dumps({"destination_id": trigger["trigger_id"], "data": big}))
        res = stack.ak("event", "dispatch", "-f", str(ev_file), "-e", "post")
        assert res.returncode != 0
        assert res.stderr.strip().endswith(
            "the event stream is full (AK_RETENTION__EVENTS_MAX_BYTES); the event was not "
            "accepted, send it again later"
        ), res.stderr
        # Space returns (here an operator raises the stream's limit): webhooks are taken again.
        url = re.search(r"NATS: +(nats://\S+)", stack.output())[1]
        users = Path(stack.env["XDG_DATA_HOME"]) / "autokitteh" / "nats-users"
        asyncio.run(_raise_limit(url, (users / "store.password").read_text().strip()))
        assert stack.request("POST", path, body)[0] == 202
        sessions = stack.sessions_of_events("full", accepted, timeout=60)
        assert sorted(s["event_id"] for s in sessions) == sorted(accepted)  # none lost
    finally:
        stack.stop()


async def _raise_limit(url: str, password: str) -> None:
    """As the operator would: the store's NATS user is the one that may change streams."""
    nc = await bus.connect(
        url, "operator", user="store", password=password, inbox_prefix=inbox_prefix("store")
    )
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM_EVENTS)
    await js.update_stream(dataclasses.replace(info.config, max_bytes=64 * 1024 * 1024))
    await nc.close()


def test_an_events_age_shorter_than_an_hour_is_refused(tmp_path: Path) -> None:
    """Events older than it are dropped whether or not they were dispatched: `ak up` refuses
    a value that could lose accepted events while the dispatchers are down for a while."""
    env = {**os.environ, "AK_RETENTION__EVENTS": "90s", "XDG_DATA_HOME": str(tmp_path)}
    res = subprocess.run(
        [AK, "up", "--mode", "dev"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode != 0
    assert "AK_RETENTION__EVENTS must be at least 1h" in res.stderr
