"""Which sessions an event starts (pure: no I/O)."""

from __future__ import annotations

from typing import Any

from akcore import cel, ids, timefmt, wire


def trigger_matches(trigger: dict[str, Any], event: wire.Event) -> bool:
    """A trigger starts a session when it has a call, its event type fits and its filter holds."""
    return (
        bool(trigger.get("call"))
        and cel.event_type_matches(trigger.get("event_type"), event.event_type)
        and cel.matches(trigger.get("filter"), event.event_type, event.data)
    )


def sessions_for(
    event: wire.Event, trigger: dict[str, Any] | None, deployments: list[dict[str, Any]]
) -> list[tuple[wire.JournalRecord, wire.Job]]:
    """One (created record, job) per active deployment when the trigger matches.

    Session ids derive from (event, trigger, deployment), so dispatching the same event
    twice names the same sessions and JetStream drops the repeated messages.
    """
    if trigger is None or not trigger_matches(trigger, event):
        return []
    out = []
    for dep in deployments:
        key = f"{event.event_id}:{trigger['trigger_id']}:{dep['deployment_id']}"
        sid = ids.derived_id("ses", (event.created_at_us or timefmt.now_us()) // 1000, key)
        job = wire.Job(
            session_id=sid,
            project_id=event.project_id,
            deployment_id=dep["deployment_id"],
            build_id=dep["build_id"],
            entrypoint=trigger["call"],
            is_durable=bool(trigger.get("is_durable", True)),
            event_id=event.event_id,
            event_type=event.event_type,
            data=event.data,
            trigger_id=trigger["trigger_id"],
        )
        created = wire.JournalRecord(
            session_id=sid,
            seq=0,
            kind=wire.CREATED,
            t_us=timefmt.now_us(),
            data={
                "project_id": job.project_id,
                "deployment_id": job.deployment_id,
                "build_id": job.build_id,
                "trigger_id": job.trigger_id,
                "event_id": job.event_id,
                "entrypoint": job.entrypoint,
                "is_durable": job.is_durable,
            },
        )
        out.append((created, job))
    return out
