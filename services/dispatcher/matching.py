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
) -> list[wire.Job]:
    """One job per active deployment when the trigger matches.

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
        out.append(job)
    return out


def inbox_deliveries(
    event: wire.Event, subscriptions: list[dict[str, Any]]
) -> list[tuple[str, wire.InboxMessage]]:
    """(session id, inbox message) for every subscription whose filter accepts the event.

    The trigger's own event type and filter do not apply to subscriptions.
    """
    out = []
    for sub in subscriptions:
        if cel.matches(sub.get("filter"), event.event_type, event.data):
            msg = wire.InboxMessage(
                kind=wire.INBOX_EVENT,
                subscription_id=sub["subscription_id"],
                event={
                    "data": event.data,
                    "event_type": event.event_type,
                    "event_id": event.event_id,
                },
            )
            out.append((sub["session_id"], msg))
    return out
