"""A full event stream refuses webhooks with 503 (never a 202 for an event it drops), and
takes them again once space returns; every accepted event still runs its session."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers import start_stack, write_project

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
    # A tiny stream whose events age out after 3 s: it fills up, then empties itself.
    settings = {"AK_RETENTION__EVENTS_MAX_BYTES": "48KiB", "AK_RETENTION__EVENTS": "3s"}
    stack = start_stack(tmp_path, settings)
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
        deadline = time.monotonic() + 60
        while (status := stack.request("POST", path, body)[0]) != 202:
            assert status == 503 and time.monotonic() < deadline, stack.output()[-3000:]
            time.sleep(0.2)
        sessions = stack.sessions_of_events("full", accepted, timeout=60)
        assert sorted(s["event_id"] for s in sessions) == sorted(accepted)  # none lost
    finally:
        stack.stop()
