"""Dispatcher service: consumes ``AK_EVENTS`` and starts a session per matching trigger."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from akcore import bus, subjects, tracing, wire
from akcore.config import Settings
from akcore.errors import AKError
from akcore.sessions import publish_session
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from opentelemetry.trace import SpanKind

from .matching import inbox_deliveries, sessions_for
from .scheduler import Scheduler

log = logging.getLogger(__name__)


async def dispatch(nc: Client, event: wire.Event) -> list[str]:
    """Creates the event's sessions; returns their ids. Safe to repeat for the same event."""
    js = nc.jetstream()
    targets = await bus.store_call(nc, "dispatch.targets", {"trigger_id": event.destination_id})
    started = []
    for job in sessions_for(event, targets["trigger"], targets["deployments"]):
        await publish_session(js, job)
        started.append(job.session_id)
        log.info("event %s: session %s (%s)", event.event_id, job.session_id, job.entrypoint)
    deliveries = inbox_deliveries(event, targets.get("subscriptions", []))
    for sid, msg in deliveries:
        await js.publish(
            subjects.inbox_subject(sid),
            wire.encode(msg),
            headers={subjects.HDR_MSG_ID: f"{event.event_id}:{msg.subscription_id}"},
        )
    # For a sync webhook waiting in ingress: did this event reach anything?
    await nc.publish(
        subjects.dispatched_subject(event.event_id),
        wire.pack({"sessions": started, "signaled": len(deliveries)}),
    )
    return started


async def handle(nc: Client, tel: tracing.Telemetry, msg: Msg, event: wire.Event) -> None:
    attrs = {"ak.event_id": event.event_id, "ak.project": event.project_id}
    parent = tracing.extract(msg.headers)
    try:
        with tel.span("dispatch", parent=parent, kind=SpanKind.CONSUMER, attributes=attrs):
            await dispatch(nc, event)
    except (AKError, NatsError) as e:  # the store or JetStream is away for now
        log.warning("event %s: will retry: %s", event.event_id, e or type(e).__name__)
        await msg.nak(delay=1.0)
        return
    except Exception:
        log.exception("event %s: dispatch failed, will retry", event.event_id)
        await msg.nak(delay=2.0)
        return
    await msg.ack()


# Events handled at once. Events for one destination (trigger or connection) are handled in
# the order they arrived, so a session waiting on that source sees them in order.
MAX_IN_FLIGHT = 64


class Lanes:
    """Runs coroutines concurrently, except that those of one key run one after the other,
    in the order they were given."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self._tails: dict[str, asyncio.Future[None]] = {}

    def run(self, key: str, work: Coroutine[Any, Any, None]) -> None:
        before = self._tails.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = mine

        async def in_turn() -> None:
            try:
                if before is not None:
                    await asyncio.shield(before)
                await work
            finally:
                mine.set_result(None)
                if self._tails.get(key) is mine:
                    del self._tails[key]

        task = asyncio.create_task(in_turn())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    nc = await bus.connect(settings.nats_url, "ak-dispatcher")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    await bus.serve_health(nc, "dispatcher")
    tel = tracing.Telemetry("dispatcher")
    tel.send_to_store(nc)
    puller = await bus.Puller.bind(nc, subjects.CONSUMER_DISPATCHER)
    ticks = asyncio.create_task(Scheduler(nc, tel).run(stop))
    lanes = Lanes()
    log.info("dispatcher ready")
    while not stop.is_set():
        free = MAX_IN_FLIGHT - len(lanes.tasks)
        if free <= 0:
            await asyncio.wait(lanes.tasks, return_when=asyncio.FIRST_COMPLETED, timeout=1.0)
            continue
        for msg in await puller.take(free):
            try:
                event = wire.decode(wire.Event, msg.data)
            except Exception as e:
                log.error("dropping malformed event %s: %s", msg.subject, e)
                await msg.term()
                continue
            lanes.run(event.destination_id, handle(nc, tel, msg, event))
    await asyncio.gather(ticks, *lanes.tasks, return_exceptions=True)
    await puller.close()
    await tel.close()
    await bus.close(nc)
