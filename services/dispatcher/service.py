"""Dispatcher service: consumes ``AK_EVENTS`` and starts a session per matching trigger."""

from __future__ import annotations

import asyncio
import logging

from akcore import bus, subjects, wire
from akcore.config import Settings
from akcore.errors import AKError
from nats.aio.client import Client
from nats.aio.msg import Msg

from .matching import sessions_for

log = logging.getLogger(__name__)


async def dispatch(nc: Client, event: wire.Event) -> list[str]:
    """Creates the event's sessions; returns their ids. Safe to repeat for the same event."""
    js = nc.jetstream()
    targets = await bus.store_call(nc, "dispatch.targets", {"trigger_id": event.destination_id})
    started = []
    for created, job in sessions_for(event, targets["trigger"], targets["deployments"]):
        sid = job.session_id
        await js.publish(
            subjects.journal_subject(sid),
            wire.encode(created),
            headers={subjects.HDR_MSG_ID: f"{sid}:0"},
        )
        await js.publish(
            subjects.job_subject(sid), wire.encode(job), headers={subjects.HDR_MSG_ID: f"job:{sid}"}
        )
        started.append(sid)
        log.info("event %s: session %s (%s)", event.event_id, sid, job.entrypoint)
    return started


async def handle(nc: Client, msg: Msg) -> None:
    try:
        event = wire.decode(wire.Event, msg.data)
    except Exception as e:
        log.error("dropping malformed event %s: %s", msg.subject, e)
        await msg.term()
        return
    try:
        await dispatch(nc, event)
    except AKError as e:
        log.warning("event %s: will retry: %s", event.event_id, e)
        await msg.nak(delay=1.0)
        return
    except Exception:
        log.exception("event %s: dispatch failed, will retry", event.event_id)
        await msg.nak(delay=2.0)
        return
    await msg.ack()


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    nc = await bus.connect(settings.nats_url, "ak-dispatcher")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    await bus.serve_health(nc, "dispatcher")
    sub = await bus.bind(js, subjects.CONSUMER_DISPATCHER)
    log.info("dispatcher ready")
    while not stop.is_set():
        for msg in await bus.pull(sub):
            await handle(nc, msg)
    await bus.close(nc)
