"""Dispatcher service: consumes ``AK_EVENTS`` and starts a session per matching trigger."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from akcore import bus, cel, service, subjects, tracing, wire
from akcore.cache import StoreCache
from akcore.config import Settings
from akcore.errors import AKError
from akcore.parking import inbox_headers
from akcore.sessions import not_started, publish_session
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from opentelemetry.trace import SpanKind

from .evaluators import Evaluators
from .matching import filters_of, inbox_deliveries, notes_of, sessions_for
from .scheduler import Scheduler
from .waker import Waker

log = logging.getLogger(__name__)
T = TypeVar("T")


# Seconds between in-progress notices for an event whose filters are being judged (so that
# JetStream does not redeliver it while it waits for an evaluator or for a heavy filter).
HOLD = 1.0


class Dispatcher:
    """Dispatches events: the connection, the caches and the filter evaluators they share.

    ``targets`` keeps each trigger's deployments and subscriptions (it must watch the
    store's change notices); ``evaluators`` judge filters off the event loop."""

    def __init__(
        self, nc: Client, tel: tracing.Telemetry, targets: StoreCache, evaluators: Evaluators
    ) -> None:
        self.nc, self.tel, self.targets, self.evaluators = nc, tel, targets, evaluators
        self.judging = 0  # events waiting for their filters to be judged

    async def dispatch(self, msg: Msg, event: wire.Event, turn: Turn) -> list[str]:
        """Creates the event's sessions and, in its ``turn``, delivers it to the sessions
        waiting for it; returns the new sessions' ids. Safe to repeat for the same event.
        Filters that could not decide leave notes on the event, kept by the store."""
        pub = bus.publisher(self.nc)
        args = {"trigger_id": event.destination_id}
        targets = await self.targets.call(self.nc, "dispatch.targets", args, event.destination_id)
        triggers, subs = targets["triggers"], targets.get("subscriptions", [])
        filters = filters_of(event, triggers, subs)
        verdicts: dict[str, cel.Verdict] = {}
        if filters:  # most events have none, and pay nothing for the evaluators
            judged = self.evaluators.judge(msg.data, list(filters.values()), event.destination_id)
            self.judging += 1
            try:
                verdicts = dict(zip(filters, await _holding(msg, judged), strict=True))
            finally:
                self.judging -= 1
        started = []
        jobs = sessions_for(event, triggers, targets["deployments"], verdicts)
        # Dispatched before? Redelivered by JetStream, or a provider's redelivery published
        # again: the store says which sessions exist.
        if (msg.metadata.num_delivered or 1) > 1 or event.memo.get("redelivered"):
            jobs = await not_started(self.nc, jobs)
        for job in jobs:
            await publish_session(pub, job)
            started.append(job.session_id)
            log.info("event %s: session %s (%s)", event.event_id, job.session_id, job.entrypoint)
        deliveries = inbox_deliveries(event, subs, verdicts)
        async with turn:
            for sid, inbox_msg in deliveries:
                await pub.publish(
                    subjects.inbox_subject(sid),
                    wire.encode(inbox_msg),
                    headers={
                        subjects.HDR_MSG_ID: f"{event.event_id}:{inbox_msg.subscription_id}",
                        **inbox_headers(inbox_msg),
                    },
                )
        await self.note(event, notes_of(triggers, subs, verdicts))
        if any(t.get("is_sync") for t in triggers):
            # A sync webhook's request waits in ingress: did this event reach anything?
            await self.nc.publish(
                subjects.dispatched_subject(event.event_id),
                wire.pack({"sessions": started, "signaled": len(deliveries)}),
            )
        return started

    async def note(self, event: wire.Event, notes: list[dict[str, str]]) -> None:
        """Has the store keep the event's notes (as AutoKitteh, they are logged too)."""
        for note in notes:
            log.info("event %s: %s", event.event_id, note["note"])
        if notes:
            args = {"event_id": event.event_id, "notes": notes}
            await bus.store_call(self.nc, "dispatch.note", args)

    async def handle(self, msg: Msg, event: wire.Event, turn: Turn) -> None:
        attrs = {"ak.event_id": event.event_id, "ak.project": event.project_id}
        parent = tracing.extract(msg.headers)
        try:
            with self.tel.span("dispatch", parent=parent, kind=SpanKind.CONSUMER, attributes=attrs):
                await self.dispatch(msg, event, turn)
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


async def _holding(msg: Msg, judged: Awaitable[T]) -> T:
    """Awaits ``judged``, telling JetStream every ``HOLD`` seconds that ``msg`` is still
    being worked on (an event with many heavy filters can take longer than its ack wait)."""
    task = asyncio.ensure_future(judged)
    try:
        while not (await asyncio.wait({task}, timeout=HOLD))[0]:
            await msg.in_progress()
    except BaseException:
        task.cancel()
        raise
    return task.result()


# Events handled at once: their sessions are created concurrently. Deliveries to waiting
# sessions take turns per destination (trigger or connection), in the order the events
# arrived, so a session waiting on a source sees its events in order.
MAX_IN_FLIGHT = 64
# Events waiting for their filters to be judged, on top: a burst of events with heavy
# filters must not keep the dispatcher from taking the events behind them (JetStream lets
# a dispatcher hold 1,024 events un-acked).
MAX_JUDGING = 512


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
    nc = await bus.connect_service(settings, "dispatcher")
    js = nc.jetstream()
    await bus.wait_streams(js, "dispatcher")
    await bus.serve_health(nc, "dispatcher")
    tel = tracing.Telemetry("dispatcher")
    tel.send_to_store(nc)
    puller = await bus.Puller.bind(nc, subjects.CONSUMER_DISPATCHER)
    ticks = asyncio.create_task(Scheduler(nc, tel).run(stop))
    waker = asyncio.create_task(Waker(nc).run(stop))
    turns = Turns()
    targets = StoreCache(ahead=True)  # asked again in the background while in use
    await targets.watch(nc)
    evaluators = Evaluators(settings.filter_budget_ms)
    dispatcher = Dispatcher(nc, tel, targets, evaluators)
    tasks: set[asyncio.Task[None]] = set()
    service.settle_heap()
    log.info("dispatcher ready")
    while not stop.is_set():
        free = min(
            MAX_IN_FLIGHT - (len(tasks) - dispatcher.judging),
            MAX_IN_FLIGHT + MAX_JUDGING - len(tasks),
        )
        if free <= 0:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=1.0)
            continue
        for msg in await puller.take(free):
            event = await bus.decode_or_drop(wire.Event, msg, "event")
            if event is None:
                continue
            turn = turns.take(event.destination_id)
            task = asyncio.create_task(dispatcher.handle(msg, event, turn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    await asyncio.gather(ticks, waker, *tasks, return_exceptions=True)
    await evaluators.close()
    await puller.close()
    await tel.close()
    await bus.close(nc)
