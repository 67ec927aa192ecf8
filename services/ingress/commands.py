"""API operations that ingress carries out itself (they publish to JetStream), not the store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from akcore import bus, ids, subjects, timefmt, wire
from akcore.errors import Conflict, InvalidArgument
from akcore.manifest import parse_call
from akcore.sessions import publish_session
from nats.aio.client import Client


async def session_start(nc: Client, args: dict[str, Any]) -> dict[str, Any]:
    """Starts a session by hand: ``deployment_id`` or ``project`` (its active deployment)."""
    entry = str(args.get("entrypoint", ""))
    parse_call(entry)
    if args.get("deployment_id"):
        dep = await bus.store_call(nc, "deployment.get", {"deployment_id": args["deployment_id"]})
    elif args.get("project"):
        dep = await bus.store_call(nc, "project.active", {"project": args["project"]})
    else:
        raise InvalidArgument("give --deployment-id or --project")
    inputs = args.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise InvalidArgument("inputs must be a map of names to JSON values")
    job = wire.Job(
        session_id=ids.new_id("ses"),
        project_id=dep["project_id"],
        deployment_id=dep["deployment_id"],
        build_id=args.get("build_id") or dep["build_id"],
        entrypoint=entry,
        is_durable=bool(args.get("durable")),
        event_id=None,
        event_type=None,
        data=inputs,
        memo={str(k): str(v) for k, v in (args.get("memo") or {}).items()},
    )
    await publish_session(bus.publisher(nc), job)
    return {"session_id": job.session_id}


async def session_stop(nc: Client, args: dict[str, Any]) -> None:
    """Asks the session's runner to stop it (delivered through the session's inbox)."""
    s = await bus.store_call(nc, "session.get", {"session": args.get("session", "")})
    if s["state"] in wire.FINAL_STATES:
        raise Conflict(f"session {s['session_id']} is already in a final state ({s['state']})")
    reason = str(args.get("reason") or "")
    if args.get("force"):
        reason = f"[forced] {reason}".strip()
    msg = wire.InboxMessage(kind=wire.INBOX_STOP, reason=reason or "stopped by user")
    await bus.publisher(nc).publish(subjects.inbox_subject(s["session_id"]), wire.encode(msg))


async def session_restart(nc: Client, args: dict[str, Any]) -> dict[str, Any]:
    """A new session with the same deployment, entry point, inputs (or event) and durability."""
    s = await bus.store_call(nc, "session.get", {"session": args.get("session", "")})
    data, event_type = s.get("inputs") or {}, None
    if s.get("event_id"):
        ev = await bus.store_call(nc, "event.get", {"event_id": s["event_id"]})
        data, event_type = ev["data"], ev["event_type"]
    job = wire.Job(
        session_id=ids.new_id("ses"),
        project_id=s["project_id"],
        deployment_id=s["deployment_id"],
        build_id=s["build_id"],
        entrypoint=s["entrypoint"],
        is_durable=bool(s["is_durable"]),
        event_id=s.get("event_id") or None,
        event_type=event_type,
        data=data,
        trigger_id=s.get("trigger_id", ""),
    )
    await publish_session(bus.publisher(nc), job)
    return {"session_id": job.session_id}


async def event_redispatch(nc: Client, args: dict[str, Any]) -> dict[str, Any]:
    """Dispatches a copy of a stored event under a new id."""
    ev = await bus.store_call(nc, "event.get", {"event_id": args.get("event_id", "")})
    copy = wire.Event(
        event_id=ids.new_id("evt"),
        project_id=ev["project_id"],
        destination_id=ev["destination_id"],
        event_type=ev["event_type"],
        data=ev["data"],
        memo={**ev["memo"], "redispatched_from": ev["event_id"]},
        created_at_us=timefmt.now_us(),
    )
    await bus.publisher(nc).publish(
        subjects.event_subject(copy.project_id, copy.event_id),
        wire.encode(copy),
        headers={subjects.HDR_MSG_ID: copy.event_id},
    )
    return {"event_id": copy.event_id}


COMMANDS: dict[str, Callable[[Client, dict[str, Any]], Awaitable[Any]]] = {
    "session.start": session_start,
    "session.stop": session_stop,
    "session.restart": session_restart,
    "event.redispatch": event_redispatch,
}
