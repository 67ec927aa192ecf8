"""The UI's pure shaping: the waterfall's rows, journal rows, an event's body."""

from __future__ import annotations

import pytest
from ak_ingress import uiviews
from akcore import timefmt
from akcore.errors import InvalidArgument


def _span(sid: str, parent: str, start: int, end: int, **extra: object) -> dict[str, object]:
    return {"span_id": sid, "parent_id": parent, "name": sid, "service": "ak-runner",
            "start_us": start, "end_us": end, **extra}  # fmt: skip


def test_waterfall_nests_children_under_parents_in_start_order() -> None:
    spans = [
        _span("b", "a", 100, 200),
        _span("a", "", 0, 1000),
        _span("c", "a", 50, 60, events=[{"name": "replay", "attributes": {}}]),
        _span("orphan", "lost", 900, 1000, status="ERROR", status_description="boom"),
    ]
    rows = uiviews.waterfall(spans)
    assert [(r.span_id, r.depth) for r in rows] == [("a", 0), ("c", 1), ("b", 1), ("orphan", 0)]
    a, c, b, orphan = rows
    assert (a.left, a.width) == (0, 100)
    assert (b.left, b.width) == (10, 10)
    assert c.replayed and not b.replayed
    assert orphan.error == "boom"
    assert uiviews.waterfall([]) == []


def test_journal_rows_say_what_happened() -> None:
    act = {"seq": 3, "kind": "activity", "t_us": 1, "data": {"step": 1, "function": "f",
           "ok": False, "error": "ValueError: x", "digest": "abcdef0123456789"}}  # fmt: skip
    row = uiviews.journal_row(act)
    assert row.summary == "#1 f (args abcdef012345) failed" and row.detail == "ValueError: x"
    again = uiviews.journal_row(
        {"seq": 5, "kind": "started", "t_us": 1, "data": {"attempt": 2, "replayed_steps": 4}}
    )
    assert again.mark == "attempt 2, 4 steps replayed"
    timed = {"seq": 4, "kind": "activity", "t_us": 1,
             "data": {"step": 2, "function": "g", "ok": True, "duration_us": 420}}  # fmt: skip
    assert uiviews.journal_row(timed).summary == "#2 g ok in 0.42 ms"
    ended = uiviews.journal_row(
        {"seq": 9, "kind": "ended", "t_us": 1,
         "data": {"state": "ERROR", "error": "boom", "traceback": "Traceback ..."}}
    )  # fmt: skip
    assert ended.summary == "ERROR" and ended.detail == "boom\nTraceback ..."
    call = uiviews.journal_row(
        {"seq": 6, "kind": "signal", "t_us": 1, "data": {"step": 2, "args": {"name": "go"}}}
    )
    assert call.summary == "#2 signal(name='go')"
    data = {"step": 3, "reason": "sleep", "deadline_us": 1_796_000_000_000_000}
    parked = {"seq": 7, "kind": "parked", "t_us": 1, "data": data}
    assert uiviews.journal_row(parked).summary == (
        "#3 parked until 2026-11-30T00:53:20Z, waiting for sleep"
    )
    forever = {"seq": 8, "kind": "parked", "t_us": 1, "data": {"step": 4, "reason": "next_event"}}
    assert uiviews.journal_row(forever).summary == "#4 parked, waiting for next_event"


def test_event_bodies_show_as_json_text_or_hex() -> None:
    as_json = uiviews.event_view({"data": {"body": {"json": {"a": 1}, "text": '{"a":1}'}}})
    assert as_json["body_kind"] == "JSON" and '"a": 1' in as_json["body"]
    text = uiviews.event_view({"data": {"body": {"json": None, "text": "hi"}, "method": "POST"}})
    assert (text["body_kind"], text["body"]) == ("text", "hi")
    assert '"method": "POST"' in text["data"]
    raw = uiviews.event_view({"data": {"body": {"json": None, "text": None, "bytes": b"\xff\x00"}}})
    assert (raw["body_kind"], raw["body"]) == ("bytes (hex)", "ff 00")


def test_pretty_shows_keys_that_are_not_text_and_data_nested_too_deep() -> None:
    # (a hand-made event's data or a session's inputs: any msgpack value)
    shown = uiviews.pretty({"a": 1, 1: "one", None: 0, b"\xff": b"v"})
    assert '"a": 1' in shown and '"1": "one"' in shown and '"None": 0' in shown
    assert '"b\'\\\\xff\'": "v"' in shown
    deep: object = "leaf"
    for _ in range(900):
        deep = [deep]
    assert "nested deeper than 100 levels: not shown" in uiviews.pretty({"x": deep})


def test_durations_read_as_a_person_says_them() -> None:
    t0 = "2026-01-01T00:00:00Z"
    assert uiviews.duration(t0, "2026-01-01T00:00:00.250000Z") == "250 ms"
    assert uiviews.duration(t0, "2026-01-01T00:00:03.5Z") == "3.50 s"
    assert uiviews.duration(t0, "2026-01-01T01:02:03Z") == "1 h 2 min 3 s"


def test_activity_durations_and_time_filters() -> None:
    assert [uiviews.ms_text(us) for us in (420, 12_345, 3_100_000, 90_000_000)] == [
        "0.42 ms", "12 ms", "3.1 s", "1.5 min",
    ]  # fmt: skip
    hour_ago = timefmt.parse_us(uiviews.since("1h"))
    assert abs(timefmt.now_us() - 3_600_000_000 - hour_ago) < 60_000_000
    with pytest.raises(InvalidArgument, match="Use one of 15m, 1h, 24h, 7d, 30d"):
        uiviews.since("3y")
