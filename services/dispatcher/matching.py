"""Which sessions an event starts, and what its dispatch notes say (pure: no I/O).

Filters are judged elsewhere (by the evaluator processes, within a budget): ``filters_of``
says which an event needs, keyed by trigger or subscription id, and the functions below
take the verdicts. ``judge_here`` judges them in this process, with no budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from akcore import cel, ids, timefmt, wire

Verdicts = Mapping[str, cel.Verdict]  # by trigger or subscription id


def trigger_applies(trigger: dict[str, Any], event: wire.Event) -> bool:
    """A trigger may start a session when it has a call and its event type fits."""
    return bool(trigger.get("call")) and cel.event_type_matches(
        trigger.get("event_type"), event.event_type
    )


def filters_of(
    event: wire.Event, triggers: list[dict[str, Any]], subscriptions: list[dict[str, Any]]
) -> dict[str, str]:
    """The filters to judge the event by, by trigger or subscription id: those with text
    only, and a trigger's only when the trigger applies. Often none. ``triggers``: the
    event's trigger, or the triggers of the connection it arrived on."""
    out = {}
    for trigger in triggers:
        if not cel.is_empty(trigger.get("filter")) and trigger_applies(trigger, event):
            out[trigger["trigger_id"]] = trigger["filter"]
    for sub in subscriptions:
        if not cel.is_empty(sub.get("filter")):
            out[sub["subscription_id"]] = sub["filter"]
    return out


def judge_here(event: wire.Event, filters: Mapping[str, str]) -> dict[str, cel.Verdict]:
    """Judges filters in this process, converting the event once for all of them."""
    variables = cel.variables(event.event_type, event.data)
    return {key: cel.judge(expr, variables) for key, expr in filters.items()}


def _passes(key: str, expr: str | None, verdicts: Verdicts) -> bool:
    return cel.is_empty(expr) or verdicts[key].matched


def sessions_for(
    event: wire.Event,
    triggers: list[dict[str, Any]],
    deployments: list[dict[str, Any]],
    verdicts: Verdicts,
) -> list[wire.Job]:
    """One job per active deployment and trigger that applies and whose filter holds.

    Session ids derive from (event, trigger, deployment), so dispatching the same event
    twice names the same sessions and JetStream drops the repeated messages.
    """
    return [
        job
        for trigger in triggers
        if trigger_applies(trigger, event)
        and _passes(trigger["trigger_id"], trigger.get("filter"), verdicts)
        for job in _jobs(event, trigger, deployments)
    ]


def _jobs(
    event: wire.Event, trigger: dict[str, Any], deployments: list[dict[str, Any]]
) -> list[wire.Job]:
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
            sealed_data=event.sealed_data,
            is_sync=bool(trigger.get("is_sync")),
        )
        out.append(job)
    return out


def inbox_deliveries(
    event: wire.Event, subscriptions: list[dict[str, Any]], verdicts: Verdicts
) -> list[tuple[str, wire.InboxMessage]]:
    """(session id, inbox message) for every subscription whose filter accepts the event.

    The trigger's own event type and filter do not apply to subscriptions.
    """
    out = []
    for sub in subscriptions:
        if _passes(sub["subscription_id"], sub.get("filter"), verdicts):
            msg = wire.InboxMessage(
                kind=wire.INBOX_EVENT,
                subscription_id=sub["subscription_id"],
                event={
                    **(
                        {"sealed_data": event.sealed_data}
                        if event.sealed_data
                        else {"data": event.data}
                    ),
                    "event_type": event.event_type,
                    "event_id": event.event_id,
                },
            )
            out.append((sub["session_id"], msg))
    return out


def notes_of(
    triggers: list[dict[str, Any]], subscriptions: list[dict[str, Any]], verdicts: Verdicts
) -> list[dict[str, str]]:
    """The event's dispatch notes: every filter that could not decide, and why (over its
    budget, an evaluation error), by whose filter it is. Filters that said no need none."""
    names = {
        s["subscription_id"]: f"subscription of session {s['session_id']}" for s in subscriptions
    }
    for trigger in triggers:
        names[trigger["trigger_id"]] = f"trigger {trigger.get('name') or trigger['trigger_id']}"
    return [
        {"source": key, "note": f"{names.get(key, key)}: {v.problem}; counted as no match"}
        for key, v in verdicts.items()
        if v.problem
    ]
