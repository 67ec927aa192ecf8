"""Every wire message round-trips; unknown fields are ignored, missing ones defaulted."""

from __future__ import annotations

import msgpack
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
