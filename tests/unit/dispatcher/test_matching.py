"""Which sessions an event starts, which filters it needs judged, and its notes."""

from __future__ import annotations

from typing import Any

from ak_dispatcher.matching import (
    filters_of,
    inbox_deliveries,
    judge_here,
    notes_of,
    sessions_for,
)
from akcore import cel, eventdata, wire
from akcore.datakey import Keyring
from akcore.sessions import created_record, job_data
from cryptography.fernet import Fernet

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


def _sessions(event: wire.Event, trigger: dict[str, Any] | None, deps: Any) -> list[wire.Job]:
    """sessions_for with the filters judged here, as the evaluators would."""
    triggers = [trigger] if trigger is not None else []
    return sessions_for(event, triggers, deps, judge_here(event, filters_of(event, triggers, [])))


def test_match_creates_record_and_job() -> None:
    (job,) = _sessions(_event(), TRIGGER, DEPS)
    created = created_record(job)
    assert (
        created.kind == wire.CREATED and created.seq == 0 and created.session_id == job.session_id
    )
    assert created.data["entrypoint"] == "a.py:f" and created.data["event_id"] == "evt_1"
    assert (job.build_id, job.deployment_id, job.event_type) == ("bld_1", "dep_1", "post")
    assert job.data == {"url": {"path": "/x"}}


def test_same_event_same_session_id() -> None:
    a = _sessions(_event(), TRIGGER, DEPS)[0].session_id
    b = _sessions(_event(), TRIGGER, DEPS)[0].session_id
    assert a == b and a.startswith("ses_")


def test_no_match() -> None:
    assert _sessions(_event("get"), TRIGGER, DEPS) == []
    assert _sessions(_event(), {**TRIGGER, "call": ""}, DEPS) == []
    assert _sessions(_event(), {**TRIGGER, "filter": "data.url.path == '/y'"}, DEPS) == []
    assert _sessions(_event(), None, DEPS) == []
    assert _sessions(_event(), TRIGGER, []) == []


def test_any_event_type() -> None:
    for et in ("", "*"):
        assert len(_sessions(_event("delete"), {**TRIGGER, "event_type": et}, DEPS)) == 1


SUBS = [
    {"subscription_id": "sub_1", "session_id": "ses_1", "filter": "data.url.path == '/x'"},
    {"subscription_id": "sub_2", "session_id": "ses_2", "filter": ""},
    {"subscription_id": "sub_3", "session_id": "ses_3", "filter": "data.nope == 1"},
]


def test_only_filters_that_can_matter_are_judged() -> None:
    filtered = {**TRIGGER, "filter": "data.url.path == '/x'"}
    assert filters_of(_event(), [TRIGGER], []) == {}  # no filter: no evaluator, no IPC
    assert filters_of(_event(), [filtered], []) == {"trg_1": "data.url.path == '/x'"}
    assert filters_of(_event("get"), [filtered], []) == {}  # its event type does not fit
    assert filters_of(_event(), [{**filtered, "call": ""}], []) == {}
    assert filters_of(_event("get"), [], SUBS) == {
        "sub_1": "data.url.path == '/x'",
        "sub_3": "data.nope == 1",
    }


def test_verdicts_decide_sessions_deliveries_and_notes() -> None:
    trigger = {**TRIGGER, "name": "heavy", "filter": "data.body.json.exists(x, x == 1)"}
    over = cel.Verdict(False, "filter ran over its 100 ms budget")
    verdicts = {"trg_1": over, "sub_1": cel.Verdict(True), "sub_3": cel.Verdict(False, "boom")}
    assert sessions_for(_event(), [trigger], DEPS, verdicts) == []
    assert sessions_for(_event(), [trigger], DEPS, {"trg_1": cel.Verdict(True)}) != []
    delivered = [sid for sid, _ in inbox_deliveries(_event(), SUBS, verdicts)]
    assert delivered == ["ses_1", "ses_2"]
    assert notes_of([trigger], SUBS, verdicts) == [
        {
            "source": "trg_1",
            "note": "trigger heavy: filter ran over its 100 ms budget; counted as no match",
        },
        {
            "source": "sub_3",
            "note": "subscription of session ses_3: boom; counted as no match",
        },
    ]


def test_a_sealed_event_passes_on_sealed_to_its_sessions_and_waiting_sessions() -> None:
    keys = Keyring([Fernet.generate_key()])
    event = eventdata.sealed(_event(data={"url": {"query": {"token": "t-1"}}}), keys)
    (job,) = sessions_for(event, [TRIGGER], DEPS, {})
    assert job.data == {} and job.sealed_data == event.sealed_data
    assert job_data(job, keys) == {"url": {"query": {"token": "t-1"}}}
    deliveries = inbox_deliveries(event, SUBS[1:2], {})
    assert [msg.event for _, msg in deliveries] == [
        {"sealed_data": event.sealed_data, "event_type": "post", "event_id": "evt_1"}
    ]
    assert b"t-1" not in wire.encode(job) + wire.encode(deliveries[0][1])


def test_an_event_on_a_connection_starts_each_of_its_triggers_that_fits() -> None:
    comment = {**TRIGGER, "trigger_id": "trg_2", "event_type": "issue_comment",
               "filter": "data.action == 'created'"}  # fmt: skip
    issues = {**TRIGGER, "trigger_id": "trg_3", "event_type": "issues", "filter": ""}
    anything = {**TRIGGER, "trigger_id": "trg_4", "event_type": "", "call": "a.py:g"}
    event = wire.Event(
        "evt_9", "prj_1", "con_1", "issue_comment", {"action": "created"}, {}, 1_000_000
    )
    jobs = _sessions_of(event, [comment, issues, anything])
    assert sorted((j.trigger_id, j.entrypoint) for j in jobs) == [
        ("trg_2", "a.py:f"),
        ("trg_4", "a.py:g"),
    ]
    assert len({j.session_id for j in jobs}) == 2  # a session of its own per trigger
    edited = wire.Event("evt_9", "prj_1", "con_1", "issue_comment", {"action": "edited"}, {}, 1)
    assert [j.trigger_id for j in _sessions_of(edited, [comment, issues, anything])] == ["trg_4"]


def _sessions_of(event: wire.Event, triggers: list[dict[str, Any]]) -> list[wire.Job]:
    return sessions_for(event, triggers, DEPS, judge_here(event, filters_of(event, triggers, [])))
