"""Every wire message round-trips; unknown fields are ignored, missing ones defaulted."""

from __future__ import annotations

import msgpack
import pytest
from akcore import ids, wire


def test_round_trips() -> None:
    msgs = [
        wire.Event(
            "evt_1",
            "prj_1",
            "trg_1",
            "post",
            {"body": {"bytes": b"\x00\xff", "json": {"n": 10**30}}},
            {"m": "1"},
            5,
        ),
        wire.Job(
            "ses_1",
            "prj_1",
            "dep_1",
            "bld_1",
            "a.py:f",
            True,
            "evt_1",
            "post",
            {"x": [1, 2]},
            "trg_1",
        ),
        wire.JournalRecord("ses_1", 3, wire.PRINT, 7, {"text": "hi"}),
        wire.StoreRequest({"a": 1}),
        wire.StoreReply(ok=False, error_kind="not_found", error="nope"),
    ]
    for m in msgs:
        assert wire.decode(type(m), wire.encode(m)) == m


def test_forward_compatible() -> None:
    raw = msgpack.packb(
        {"session_id": "ses_1", "seq": 1, "kind": "print", "t_us": 2, "new_field": 1}
    )
    assert wire.decode(wire.JournalRecord, raw) == wire.JournalRecord("ses_1", 1, "print", 2, {})


def test_ids() -> None:
    a, b = ids.new_id("ses"), ids.new_id("ses")
    assert a != b and len(a) == 30 and ids.is_id(a, "ses") and not ids.is_id(a, "prj")
    assert ids.id_prefix("py_simple") is None
    assert ids.derived_id("ses", 1000, "k") == ids.derived_id("ses", 1000, "k")
    assert ids.derived_id("ses", 1000, "k") != ids.derived_id("ses", 1000, "j")
    # TypeID's own example, and the edges.
    assert ids._encode(0x01890A5DAC96774BBCCEB302099A8057) == "01h455vb4pex5vsknk084sn02q"
    assert ids._encode(0) == "0" * 26 and ids._encode(2**128 - 1) == "7" + "z" * 25
    # A derived id must never change between versions: redelivered events rely on it.
    assert ids.derived_id("ses", 1000, "k") == "ses_00000000z8f59r6ad9518fdn9s"
    slug = ids.new_slug()
    assert len(slug) == 26 and set(slug) <= set(ids.ALPHABET)


def test_a_field_of_another_type_is_refused_naming_it() -> None:
    """What crosses a boundary is checked as it is decoded: a field of another type than
    its annotation (its outer type) is a ValueError naming it, before anything uses it."""
    event = {"event_id": "evt_1", "project_id": "prj_1", "destination_id": "trg_1"}
    event.update(event_type="post", data={}, memo={})
    ok = wire.decode(wire.Event, msgpack.packb(event))
    assert ok.data == {} and ok.sealed_data == b""
    for field, value, message in [
        ("sealed_data", 5, "Event.sealed_data: expected bytes, got int"),
        ("memo", 5, "Event.memo: expected dict[str, str], got int"),
        ("memo", {1: "x"}, "Event.memo: expected dict[str, str], got other keys"),
        ("data", [1], "Event.data: expected dict[str, Any], got list"),
        ("destination_id", 5, "Event.destination_id: expected str, got int"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            wire.decode(wire.Event, msgpack.packb({**event, field: value}))
    # A memo's values that are not text (an earlier runner's child job) come as JSON text.
    memo = {"n": 1, "l": [1, None], "s": "x", "b": b"\x00"}
    got = wire.decode(wire.Event, msgpack.packb({**event, "memo": memo}))
    assert got.memo == {"n": "1", "l": "[1, null]", "s": "x", "b": got.memo["b"]}
    assert isinstance(got.memo["b"], str)
    job = wire.Job("ses_1", "prj_1", "dep_1", "bld_1", "a.py:f", True, None, None, {})
    assert wire.decode(wire.Job, wire.encode(job)) == job  # optional fields take None
    with pytest.raises(ValueError, match=r"Job.event_id: expected str \| None, got int"):
        wire.decode(wire.Job, msgpack.packb({**wire.unpack(wire.encode(job)), "event_id": 1}))
    # Unannotated (Any) fields take anything; a bool field takes an int, as Python does.
    assert wire.decode(wire.StoreReply, msgpack.packb({"ok": 1, "result": [1]})).ok
