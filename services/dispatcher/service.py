"""Dispatcher service: consumes ``AK_EVENTS`` and starts a session per matching trigger."""

from __future__ import annotations

import asyncio
import logging

from akcore import bus, subjects, tracing, wire
from akcore.cache import StoreCache
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


async def dispatch(
    nc: Client, event: wire.Event, turn: Turn, targets_cache: StoreCache
) -> list[str]:
    """Creates the event's sessions and, in its ``turn``, delivers it to the sessions
    waiting for it; returns the new sessions' ids. Safe to repeat for the same event.
    ``targets_cache`` keeps each trigger's deployments and subscriptions (it must watch the
    store's change notices)."""
    pub = bus.publisher(nc)
    args = {"trigger_id": event.destination_id}
    targets = await targets_cache.call(nc, "dispatch.targets", args, event.destination_id)
    started = []
    for job in sessions_for(event, targets["trigger"], targets["deployments"]):
        await publish_session(pub, job)
        started.append(job.session_id)
        log.info("event %s: session %s (%s)", event.event_id, job.session_id, job.entrypoint)
    deliveries = inbox_deliveries(event, targets.get("subscriptions", []))
    async with turn:
        for sid, msg in deliveries:
            await pub.publish(
                subjects.inbox_subject(sid),
                wire.encode(msg),
                headers={subjects.HDR_MSG_ID: f"{event.event_id}:{msg.subscription_id}"},
            )
    if (targets["trigger"] or {}).get("is_sync"):
        # A sync webhook's request waits in ingress: did this event reach anything?
        await nc.publish(
            subjects.dispatched_subject(event.event_id),
            wire.pack({"sessions": started, "signaled": len(deliveries)}),
        )
    return started


async def handle(
    nc: Client,
    tel: tracing.Telemetry,
    msg: Msg,
    event: wire.Event,
    turn: Turn,
    targets: StoreCache,
) -> None:
    attrs = {"ak.event_id": event.event_id, "ak.project": event.project_id}
    parent = tracing.extract(msg.headers)
    try:
        with tel.span("dispatch", parent=parent, kind=SpanKind.CONSUMER, attributes=attrs):
            await dispatch(nc, event, turn, targets)
    except (AKError, NatsError) as e:  # the store or JetStream is away for now
        log.warning("event %s: will retry: %s", event.event_id, e or type(e).__name__)
        await msg.nak(delay=1.0)
        return
    except Exception:
        log.exception("event %s: dispatch failed, will retry", event.event_id)
        await msg.nak(delay=2.0)
        return
    finally:
        turn.release()
    await msg.ack()


# Events handled at once: their sessions are created concurrently. Deliveries to waiting
# sessions take turns per destination (trigger or connection), in the order the events
# arrived, so a session waiting on a source sees its events in order.
MAX_IN_FLIGHT = 64


class Turn:
    """One event's turn among the events of its destination (see ``Turns``)."""

    def __init__(self, turns: Turns, key: str, before: asyncio.Future[None] | None) -> None:
        self._turns, self._key, self._before = turns, key, before
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> None:
        if self._before is not None:
            await asyncio.shield(self._before)

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Lets the next event of the destination go (also when this one failed)."""
        if not self.done.done():
            self.done.set_result(None)
            self._turns.forget(self._key, self.done)


class Turns:
    """Hands out turns per key in the order they are asked for."""

    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future[None]] = {}

    def take(self, key: str) -> Turn:
        turn = Turn(self, key, self._last.get(key))
        self._last[key] = turn.done
        return turn

    def forget(self, key: str, done: asyncio.Future[None]) -> None:
        if self._last.get(key) is done:
            del self._last[key]


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
    turns = Turns()
    targets = StoreCache()
    await targets.watch(nc)
    tasks: set[asyncio.Task[None]] = set()
    log.info("dispatcher ready")
    while not stop.is_set():
        free = MAX_IN_FLIGHT - len(tasks)
        if free <= 0:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=1.0)
            continue
        for msg in await puller.take(free):
            event = await bus.decode_or_drop(wire.Event, msg, "event")
            if event is None:
                continue
            turn = turns.take(event.destination_id)
            task = asyncio.create_task(handle(nc, tel, msg, event, turn, targets))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    await asyncio.gather(ticks, *tasks, return_exceptions=True)
    await puller.close()
    await tel.close()
    await bus.close(nc)
