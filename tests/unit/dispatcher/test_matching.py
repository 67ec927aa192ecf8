"""Which sessions an event starts."""

from __future__ import annotations

from ak_dispatcher.matching import sessions_for
from akcore import wire
from akcore.sessions import created_record

TRIGGER = {
    "trigger_id": "trg_1",
    "call": "a.py:f",
    "event_type": "post",
    "filter": "",
    "is_durable": True,
}
DEPS = [{"deployment_id": "dep_1", "build_id": "bld_1"}]


def _event(event_type: str = "post", data: dict | None = None) -> wire.Event:  # type: ignore[type-arg]
    return wire.Event(
        "evt_1", "prj_1", "trg_1", event_type, data or {"url": {"path": "/x"}}, {}, 1_000_000
    )


def test_match_creates_record_and_job() -> None:
    (job,) = sessions_for(_event(), TRIGGER, DEPS)
    created = created_record(job)
    assert (
        created.kind == wire.CREATED and created.seq == 0 and created.session_id == job.session_id
    )
    assert created.data["entrypoint"] == "a.py:f" and created.data["event_id"] == "evt_1"
    assert (job.build_id, job.deployment_id, job.event_type) == ("bld_1", "dep_1", "post")
    assert job.data == {"url": {"path": "/x"}}


def test_same_event_same_session_id() -> None:
    a = sessions_for(_event(), TRIGGER, DEPS)[0].session_id
    b = sessions_for(_event(), TRIGGER, DEPS)[0].session_id
    assert a == b and a.startswith("ses_")


def test_no_match() -> None:
    assert sessions_for(_event("get"), TRIGGER, DEPS) == []
    assert sessions_for(_event(), {**TRIGGER, "call": ""}, DEPS) == []
    assert sessions_for(_event(), {**TRIGGER, "filter": "data.url.path == '/y'"}, DEPS) == []
    assert sessions_for(_event(), None, DEPS) == []
    assert sessions_for(_event(), TRIGGER, []) == []


def test_any_event_type() -> None:
    for et in ("", "*"):
        assert len(sessions_for(_event("delete"), {**TRIGGER, "event_type": et}, DEPS)) == 1
