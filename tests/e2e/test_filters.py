"""A trigger filter over its budget: no session, a note on the event, and nobody else waits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.helpers import Stack, start_stack, write_project

BUDGET_MS = 5000
# Nine million steps of cel-python for a 3,000-item body: minutes of CPU, so the filter runs
# over any budget; its webhook body is small (the cost is in the filter, not the event).
HEAVY = "data.body.json.all(x, data.body.json.all(y, y >= 0))"
MANIFEST = f"""\
version: v1
project:
  name: filters
  triggers:
    - name: heavy
      call: program.py:on_event
      webhook: {{}}
      filter: "{HEAVY}"
    - name: light
      call: program.py:on_event
      webhook: {{}}
      filter: "data.method == 'POST' && data.body.json.n == 1"
"""
PROGRAM = """\
def on_event(event):
    print("got", event.event_id)
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("filters")
    s = start_stack(home, {"AK_DISPATCHER__FILTER_BUDGET_MS": str(BUDGET_MS)})
    yield s
    s.stop()


def test_a_filter_over_its_budget_delays_no_other_trigger(stack: Stack, tmp_path: Any) -> None:
    project = write_project(
        tmp_path / "filters", {"autokitteh.yaml": MANIFEST, "program.py": PROGRAM}
    )
    paths = stack.deploy_paths(project)
    status, heavy = stack.post_json(paths["heavy"], list(range(3000)))
    assert status == 202
    status, light = stack.post_json(paths["light"], {"n": 1})
    assert status == 202

    # The light event came second, yet its session ended before the heavy event's filter was
    # decided (the times are the system's own: the runner's end record, the store's note).
    ended = stack.wait_session(stack.session_of("filters", light))
    assert ended["state"] == "COMPLETED"
    deadline = time.monotonic() + 120
    while not (noted := stack.event(heavy)) or not noted["notes"]:
        assert time.monotonic() < deadline, stack.output()[-3000:]
        time.sleep(0.2)
    (note,) = noted["notes"]
    assert _time(ended["updated_at"]) < _time(note["at"])
    assert note["note"] == (
        f"trigger heavy: filter ran over its {BUDGET_MS} ms budget; counted as no match"
    )
    # `ak event get` says so, and the heavy event started no session.
    text = stack.ak("event", "get", heavy, check=True).stdout
    assert f"filter ran over its {BUDGET_MS} ms budget" in text
    sessions = stack.ak("session", "list", "-p", "filters", "--event-id", heavy, "-j").stdout
    assert sessions.strip() == ""


def _time(rfc3339: str) -> datetime:
    return datetime.fromisoformat(rfc3339)
