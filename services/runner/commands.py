"""The session operations of the API that a runner carries out for ingress: starting,
stopping and restarting sessions by hand. They write a new session's first journal
record and its job, or a stop request to a session's inbox, which ingress (the service
facing the internet) may not: its NATS user publishes events, never a journal, a job or
an inbox message (``akcore.natsauth``)."""

from __future__ import annotations

from typing import Any

from akcore import bus, ids, subjects, wire
from akcore import requests as rq
from akcore.datakey import Keyring
from akcore.errors import Conflict, InvalidArgument, NotFound
from akcore.manifest import parse_call
from akcore.parking import inbox_headers
from akcore.sessions import publish_session
from nats.aio.client import Client
from nats.errors import MaxPayloadError


async def session_start(nc: Client, keys: Keyring, req: rq.SessionStart) -> dict[str, Any]:
    """Starts a session by hand: ``deployment_id`` or ``project`` (its active deployment)."""
    parse_call(req.entrypoint)
    if req.deployment_id:
        dep = await bus.store_call(nc, "deployment.get", {"deployment_id": req.deployment_id})
    elif req.project:
        dep = await bus.store_call(nc, "project.active", {"project": req.project})
    else:
        raise InvalidArgument("give --deployment-id or --project")
    if req.build_id:
        await _check_build(nc, req.build_id, dep)
    job = wire.Job(
        session_id=ids.new_id("ses"),
        project_id=dep["project_id"],
        deployment_id=dep["deployment_id"],
        build_id=req.build_id or dep["build_id"],
        entrypoint=req.entrypoint,
        is_durable=req.durable,
        event_id=None,
        event_type=None,
        data=req.inputs,
        memo=req.memo,
    )
    await _publish(nc, job, keys)
    return {"session_id": job.session_id}


async def _publish(nc: Client, job: wire.Job, keys: Keyring) -> None:
    """``publish_session``; InvalidArgument when its messages are over NATS's limit."""
    try:
        await publish_session(bus.publisher(nc), job, keys)
    except MaxPayloadError:
        raise InvalidArgument(
            f"the session's inputs and memo are over the NATS message limit "
            f"({nc.max_payload} bytes): send less (keep big data elsewhere and pass a "
            "reference to it)"
        ) from None


async def _check_build(nc: Client, build_id: str, dep: dict[str, Any]) -> None:
    """A session runs a build of its deployment's project, never another project's."""
    build = await bus.store_call(nc, "build.get", {"build_id": build_id, "with_files": False})
    if build["project_id"] != dep["project_id"]:
        raise InvalidArgument(
            f'build "{build_id}" belongs to another project than deployment '
            f'"{dep["deployment_id"]}": give a build of the same project, or leave '
            "--build-id out to run the deployment's own build"
        )


async def _check_kept(nc: Client, s: dict[str, Any]) -> None:
    """A session runs again only with its own build, which goes with its deployment once
    the project has made newer ones (``ak_store.history``)."""
    try:
        await bus.store_call(nc, "build.get", {"build_id": s["build_id"], "with_files": False})
    except NotFound:
        raise NotFound(
            f"session {s['session_id']} ran build {s['build_id']}, which is no longer kept "
            "(a project keeps the builds of its newest deployments): start a new session "
            "of the project instead (`ak session start`)"
        ) from None


async def session_stop(nc: Client, keys: Keyring, req: rq.SessionStop) -> None:
    """Asks the session's runner to stop it (delivered through the session's inbox)."""
    s = await bus.store_call(nc, "session.get", {"session": req.session})
    if s["state"] in wire.FINAL_STATES:
        raise Conflict(f"session {s['session_id']} is already in a final state ({s['state']})")
    reason = f"[forced] {req.reason}".strip() if req.force else req.reason
    msg = wire.InboxMessage(kind=wire.INBOX_STOP, reason=reason or "stopped by user")
    await bus.publisher(nc).publish(
        subjects.inbox_subject(s["session_id"]), wire.encode(msg), headers=inbox_headers(msg)
    )


async def session_restart(nc: Client, keys: Keyring, req: rq.SessionRef) -> dict[str, Any]:
    """A new session with the same deployment, entry point, inputs (or event) and durability."""
    s = await bus.store_call(nc, "session.get", {"session": req.session})
    await _check_kept(nc, s)
    data, event_type, sealed_data = s.get("inputs") or {}, None, b""
    if s.get("event_id"):  # the event's data, sealed to it, passes on as it is
        ev = await bus.store_call(nc, "event.get", {"event_id": s["event_id"], "sealed": True})
        data, event_type, sealed_data = {}, ev["event_type"], ev["sealed_data"]
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
        sealed_data=sealed_data,
    )
    await _publish(nc, job, keys)
    return {"session_id": job.session_id}


COMMANDS = {
    "session.start": session_start,
    "session.stop": session_stop,
    "session.restart": session_restart,
}
