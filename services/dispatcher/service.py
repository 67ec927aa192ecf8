"""Dispatcher service: consumes ``AK_EVENTS`` and starts a session per matching trigger."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from akcore import bus, cel, eventdata, keycheck, service, subjects, tracing, waitfor, wire
from akcore.cache import StoreCache
from akcore.config import Settings
from akcore.datakey import Keyring, SealError
from akcore.errors import AKError
from akcore.ops import Cache
from akcore.parking import inbox_headers
from akcore.secrets import load_keyring
from akcore.sessions import not_started, publish_session
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind

from .admission import Admission
from .evaluators import Evaluators
from .matching import filters_of, inbox_deliveries, notes_of, sessions_for
from .scheduler import Scheduler
from .takeback import DESTINATION, TakeBack
from .waker import Waker

log = logging.getLogger(__name__)


# Seconds between in-progress notices for an event being handled (so that JetStream does
# not redeliver it while it waits for an evaluator, a heavy filter, or its turn).
HOLD = 1.0
# Deliveries of an event whose dispatch failed with an error that is not the store's or
# JetStream's absence (which are waited out, however long) before it is given up.
GIVE_UP = 3
# Pauses before an event whose dispatch failed for a reason that passes (the store or
# JetStream away or busy) is tried again in place, holding its turn, so the events of its
# destination after it wait (handed back to JetStream, it would come again behind them).
# Once they are over (counted from the first failure, the tries' own time included), it is
# handed back all the same: an outage that long holds up no destination for good.
AGAIN_IN_PLACE = (1.0, 2.0, 4.0, 8.0, 8.0, 8.0)
MAX_FAILING = 10_000  # events whose failures a dispatcher counts at once


class Refused(Exception):
    """JetStream refused an event's copy for AK_DEFERRED (the stream full, or away)."""


async def fetch_targets(nc: Client, op: str, args: dict[str, Any]) -> Any:
    """The store's answer to ``op``; for ``dispatch.targets``, with every page of the
    trigger's subscriptions (the store answers them a page at a time)."""
    answer = await bus.store_call(nc, op, args)
    if op != "dispatch.targets":
        return answer
    subs = list(answer.get("subscriptions", []))
    asked: set[str] = set()
    while (more := answer.get("more")) and isinstance(more, str) and more not in asked:
        asked.add(more)  # (a store answering the same page again is not followed round)
        answer = await bus.store_call(nc, op, {**args, "after": more})
        subs.extend(answer.get("subscriptions", []))
    return {**answer, "subscriptions": subs, "more": ""}


class Tries:
    """What the earlier tries in place of one delivery of an event found (``handle``)."""

    def __init__(self) -> None:
        self.failed = 0  # earlier tries, each of which failed
        self.admitted = False  # one let it wait here for its filters (not deferred)
        self.deferring = False  # one's deferral timed out: a copy may be in AK_DEFERRED
        self.pauses = iter(AGAIN_IN_PLACE)
        self.until = 0.0  # the loop time after which it is handed back (from the first failure)


class Dispatcher:
    """Dispatches events: the connection, the caches and the filter evaluators they share.

    ``targets`` keeps each trigger's deployments and subscriptions (it must watch the
    store's change notices); ``evaluators`` judge filters off the event loop; ``admission``
    says which events wait for them here and which are deferred."""

    def __init__(
        self,
        nc: Client,
        tel: tracing.Telemetry,
        targets: StoreCache,
        evaluators: Evaluators,
        keys: Keyring,
    ) -> None:
        self.nc, self.tel, self.targets, self.evaluators = nc, tel, targets, evaluators
        self.keys = keys  # opens events' data for their filters, seals an earlier version's
        self._failures: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.admission = Admission()
        self.deferring = False  # AK_DEFERRED is there (see ``_take_back``)
        # told of each destination deferred (``TakeBack.deferred``: it takes turns at once)
        self.on_deferred: Callable[[str], None] = lambda key: None
        self.stopping = asyncio.Event()  # set: events that failed are handed back at once

    async def dispatch(
        self,
        msg: Msg,
        event: wire.Event,
        turn: Turn,
        deferred: bool = False,
        tries: Tries | None = None,
        crowded: bool = False,
    ) -> list[str]:
        """Creates the event's sessions and, in its ``turn``, delivers it to the sessions
        waiting for it; returns the new sessions' ids. Safe to repeat for the same event.
        Filters that could not decide leave notes on the event, kept by the store. An
        event whose filters cannot wait here now is deferred instead (and starts nothing
        yet); ``deferred``: ``msg`` is one taken back from ``AK_DEFERRED``; ``tries``: this
        delivery's earlier tries, which failed; ``crowded``: its destination had its share
        of events in the dispatcher when it was taken (``Admission.enter``): deferred,
        filters or not."""
        pub = bus.publisher(self.nc)
        key = event.destination_id
        tries = tries if tries is not None else Tries()
        handed_again = (msg.metadata.num_delivered or 1) > 1  # by JetStream
        redelivered = handed_again or tries.failed > 0
        if deferred and not redelivered:
            self.admission.taken_back(key)
        targets = await self.targets.call(self.nc, "dispatch.targets", {"trigger_id": key}, key)
        triggers, subs = targets["triggers"], targets.get("subscriptions", [])
        filters = filters_of(event, triggers, subs)
        verdicts: dict[str, cel.Verdict] = {}
        # Deferred when its filters cannot wait here now, and whenever it comes again:
        # a dispatcher that stopped after its copy was stored and before it acked it
        # left it in AK_DEFERRED, where it is judged in its turn, and judged here too its
        # deliveries to waiting sessions would come twice (further apart than the
        # duplicate window). Deferring it again is safe either way: JetStream drops the
        # copy as a duplicate if the first is there (or was, and was judged).
        # Tried again in place (``tries``), it was not handed out again: deferred only
        # when an earlier try's copy may be there (its deferral timed out), or, not
        # judged here yet, when its destination's events are deferred now. One an
        # earlier try let wait here keeps its turn (deferred now, the events after it,
        # judged meanwhile, would reach waiting sessions before it).
        # An event whose filters went since an earlier try's deferral timed out is deferred
        # all the same: its copy may be there, and is the one judged.
        # Without filters too: when its destination has events deferred, which go first;
        # and when it is crowded (``admission``) and has no waiting sessions, whose
        # deliveries an event dispatched twice would repeat. (One deferred without and
        # handed out again, dispatched here and from its copy, starts its sessions once:
        # their ids derive from the event, and both dispatches ask the store which exist.)
        # An event with waiting sessions that comes again may have such a copy: deferred
        # again, as a filtered one (JetStream drops the copy as a duplicate if the first
        # is there, or was).
        pressed = (crowded and not subs) or self.admission.has_deferred(key)
        again = handed_again and bool(subs)
        if (filters or pressed or again or tries.deferring) and not deferred and not tries.admitted:
            maybe_there = tries.deferring
            must = handed_again or maybe_there or crowded or not await self.admits(key)
            if must:
                tries.deferring = False
                try:
                    if await self.defer(msg, event):
                        return []
                except TimeoutError:
                    tries.deferring = True  # (stored or not: unknown)
                    raise
                except Refused as e:
                    if maybe_there or handed_again:
                        # A copy an earlier try or delivery stored may be there still
                        # (a dispatcher that stopped after storing it handed it again):
                        # judged here, it could be judged twice. Tried again, deferred
                        # once AK_DEFERRED takes it (a duplicate if the copy is there).
                        tries.deferring = True
                        raise TimeoutError(
                            f"not deferred ({e}); a deferred copy of an earlier try or "
                            "delivery may be stored"
                        ) from e
                    log.warning("event %s: not deferred (%s); judging it here", event.event_id, e)
            tries.admitted = True
        if filters:  # most events have none, and pay nothing for the evaluators
            if (clear := self._in_clear(msg, event)) is None:
                problem = cel.Verdict(False, "its data could not be opened (see the log)")
                verdicts = dict.fromkeys(filters, problem)
            else:
                with self.admission.waiting(key, deferred):
                    judged = await self.evaluators.judge(clear, list(filters.values()), key)
                    verdicts = dict(zip(filters, judged, strict=True))
        # Sessions and waiting sessions get the data sealed: as it is, or sealed here when
        # an earlier version published it in the clear.
        event = eventdata.sealed(event, self.keys)
        started = []
        jobs = sessions_for(event, triggers, targets["deployments"], verdicts)
        reached = [job.session_id for job in jobs]  # started now or by an earlier delivery
        # Dispatched before? Redelivered by JetStream, or a provider's redelivery published
        # again, or deferred (a dispatcher that stopped after deferring it and before its
        # ack dispatched it again): the store says which sessions exist.
        if redelivered or self._redelivery(event) or deferred:
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
            # A sync webhook's request waits in ingress: did this event reach anything? (Its
            # sessions, also those an earlier delivery started: else a request answered by
            # a redelivery would get a 502 while its session runs.)
            await self.nc.publish(
                subjects.dispatched_subject(event.event_id),
                wire.pack({"sessions": reached, "signaled": len(deliveries)}),
            )
        return started

    def _redelivery(self, event: wire.Event) -> bool:
        """Whether ingress marked the event a provider's redelivery (in its memo); one
        whose memo does not open is taken for one (the store then says which of its
        sessions exist)."""
        try:
            return bool(eventdata.memo_of(event, self.keys).get("redelivered"))
        except SealError:
            return True

    def _in_clear(self, msg: Msg, event: wire.Event) -> bytes | None:
        """The event for the filter evaluators, its data opened (they judge the data); None
        when it does not open (altered, or sealed with a key this dispatcher lacks)."""
        if not event.sealed_data:
            return msg.data
        try:
            return wire.encode(eventdata.opened(event, self.keys))
        except SealError as e:
            log.error("event %s: its data could not be opened: %s", event.event_id, e.message)
            return None

    async def admits(self, key: str) -> bool:
        """Whether an event of destination ``key`` may wait here for its filters (see
        ``admission``). A destination deferred by this dispatcher whose deferred events
        another dispatcher took back is found out by looking at ``AK_DEFERRED`` now and
        then."""
        if self.admission.should_look(key, asyncio.get_running_loop().time()):
            try:
                await self.nc.jetstream().get_last_msg(
                    subjects.STREAM_DEFERRED, subjects.deferred_subject(key)
                )
            except NotFoundError:
                self.admission.gone(key)
            except NatsError as e:  # asked again at the next look
                log.debug("looking for deferred events of %s: %s", key, e)
        return self.admission.admits(key)

    async def defer(self, msg: Msg, event: wire.Event) -> bool:
        """Copies the event to ``AK_DEFERRED``, from which it is judged once the events of
        its destination before it were; False when there is nowhere to (it is judged here).
        Raises ``Refused`` when JetStream refused the copy (full, or away), TimeoutError
        when its answer did not come (stored or not: unknown)."""
        key = event.destination_id
        if not self.deferring or not DESTINATION.fullmatch(key):
            return False  # nowhere to, or no subject token: judged here
        if self.admission.deferred(key):  # counted at once: its next events defer too
            log.info(
                "destination %s: too many of its events are in the dispatcher or wait for "
                "their filters; deferring its next ones to %s",
                key,
                subjects.STREAM_DEFERRED,
            )
        headers = tracing.inject({subjects.HDR_MSG_ID: event.event_id})
        try:
            await bus.publisher(self.nc).publish(
                subjects.deferred_subject(key), msg.data, headers=headers
            )
        except TimeoutError as e:  # (nats' own is one too) stored or not: unknown
            # Judged here, it could be judged again from AK_DEFERRED later (delivered twice
            # to a waiting session, past the duplicate window). Left un-acked instead, it
            # comes back and is deferred again, whatever its destination's count then (a
            # duplicate if the copy was stored).
            log.warning("event %s: deferring it timed out (%s); trying again", event.event_id, e)
            self.admission.taken_back(key)
            raise
        except NatsError as e:  # full, or away: judged late rather than not
            self.admission.taken_back(key)
            raise Refused(str(e) or type(e).__name__) from e
        self.on_deferred(key)
        # write-ahead: kept on AK_DEFERRED before the caller acks it on AK_EVENTS (a copy
        # there already, a duplicate, is as good: the event was deferred before)
        return True

    async def note(self, event: wire.Event, notes: list[dict[str, str]]) -> None:
        """Has the store keep the event's notes (as AutoKitteh, they are logged too)."""
        for note in notes:
            log.info("event %s: %s", event.event_id, note["note"])
        if notes:
            args = {"event_id": event.event_id, "notes": notes}
            await bus.store_call(self.nc, "dispatch.note", args)

    async def handle(
        self, msg: Msg, event: wire.Event, turn: Turn, deferred: bool, crowded: bool = False
    ) -> None:
        attrs = {"ak.event_id": event.event_id, "ak.project": event.project_id}
        parent = tracing.extract(msg.headers)
        holding = asyncio.create_task(_hold(msg))
        tries = Tries()
        try:
            while True:
                try:
                    with self.tel.span(
                        "dispatch", parent=parent, kind=SpanKind.CONSUMER, attributes=attrs
                    ):
                        await self.dispatch(msg, event, turn, deferred, tries, crowded)
                    break
                except Exception as e:
                    if _will_repeat(e):
                        holding.cancel()  # (before the nak: a +WPI after it resets its delay)
                        await self._failed(msg, event, e)
                        return
                    # the store or JetStream is away, or busy: waited out, however long
                    if await self._paused(event, e, tries):
                        tries.failed += 1
                        continue
                    # handed back: it comes again, behind the events after it
                    log.warning("event %s: will retry: %s", event.event_id, e or type(e).__name__)
                    # (the hold first: a +WPI that reached JetStream after the nak would put
                    # its redelivery off to the whole ack wait)
                    holding.cancel()
                    await msg.nak(delay=1.0)
                    return
        finally:
            holding.cancel()
            turn.release()
        self._failures.pop(event.event_id, None)
        await msg.ack()

    async def _paused(self, event: wire.Event, e: Exception, tries: Tries) -> bool:
        """Waits for the next pause of ``AGAIN_IN_PLACE`` after a failure that passes;
        False when the event is to be handed back instead (the pauses are over, or the
        dispatcher is stopping)."""
        now = asyncio.get_running_loop().time()
        if not tries.failed:  # the tries' own time counts too (a store call's 10 s)
            tries.until = now + sum(AGAIN_IN_PLACE)
        pause = next(tries.pauses, None)
        if pause is None or now >= tries.until or self.stopping.is_set():
            return False
        # (cut to the window: the pauses add up to it, and each try takes a little time,
        # so the last would never fit whole)
        pause = min(pause, tries.until - now)
        why = e or type(e).__name__
        log.warning("event %s: will retry in %g s: %s", event.event_id, pause, why)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), pause)
        return not self.stopping.is_set()

    async def _failed(self, msg: Msg, event: wire.Event, e: Exception) -> None:
        """An error that will most likely come again (a bug, a malformed event): the event
        is tried until it failed so ``GIVE_UP`` times here (failures that pass do not
        count), then left with a note (it stays in the store: ``ak event redispatch``
        sends a copy)."""
        failures = self._failures.pop(event.event_id, 0) + 1
        if failures < GIVE_UP:
            self._failures[event.event_id] = failures
            while len(self._failures) > MAX_FAILING:  # (those another dispatcher took over)
                self._failures.popitem(last=False)
            log.exception("event %s: dispatch failed, will retry", event.event_id)
            await msg.nak(delay=2.0)
            return
        log.exception(
            "event %s: dispatch failed %d times; given up (ak event redispatch sends a copy)",
            event.event_id,
            failures,
        )
        note = (
            f"dispatch failed {failures} times with {type(e).__name__} (in the dispatcher's "
            "log); given up: nothing was started; `ak event redispatch` dispatches a copy"
        )
        try:
            await self.note(event, [{"source": "dispatcher", "note": note}])
        except (AKError, NatsError, TimeoutError) as away:  # the log has said it
            log.warning("event %s: its note was not kept: %s", event.event_id, away)
        await msg.term()


# What passes, or may: the store or JetStream away or busy, an answer too large for now
# (a trigger's subscriptions), a store of another version, the machine short of processes,
# files or memory.
_PASSING = (AKError, NatsError, TimeoutError, OSError, MemoryError)


def _will_repeat(e: Exception) -> bool:
    """Whether an error of a dispatch would come again with the same event (a bug, or an
    event the code cannot take: one whose session's job or record is over NATS's message
    limit, which is so on every try)."""
    return isinstance(e, MaxPayloadError) or not isinstance(e, _PASSING)


async def _hold(msg: Msg) -> None:
    """Tells JetStream every ``HOLD`` seconds that ``msg`` is still being handled, until
    cancelled. An event can take longer than its ack wait: many heavy filters, an evaluator
    slow to start, or the events of its destination before it still being handled. Handed
    out again meanwhile, its copy would take a turn behind the events after it. (A cancel
    that comes as a notice waits for the client's flush is not lost: ``bus.CancellableClient``.)"""
    while True:
        await asyncio.sleep(HOLD)
        try:
            await msg.in_progress()
        except (NatsError, OSError) as e:  # NATS away: its redelivery is safe, if later
            log.debug("holding an event: %s", e)


# Events handled at once: their sessions are created concurrently. Deliveries to waiting
# sessions take turns per destination (trigger or connection), in the order the events
# arrived, so a session waiting on a source sees its events in order. Events waiting for
# their filters come on top (up to ``admission.TOTAL``), so that a burst of events with heavy
# filters does not keep the dispatcher from taking the events behind them.
MAX_IN_FLIGHT = 64
# Deferred events taken back at once (all of them wait for their filters, in turns by
# destination, as the evaluators free up), dealt in turns among the destinations with
# deferred events (``takeback``).
MAX_TAKEN_BACK = 64


class Turn:
    """One event's turn among the events of its destination (see ``Turns``)."""

    def __init__(self, turns: Turns, key: str, before: asyncio.Future[None] | None) -> None:
        self._turns, self._key, self._before = turns, key, before
        self._released = False
        # Set once this event and every event of the destination before it are through.
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> None:
        if self._before is not None:
            await asyncio.shield(self._before)

    async def __aexit__(self, failed: type[BaseException] | None, *exc: object) -> None:
        if failed is None:  # (one that failed may be tried again in its turn: see ``handle``)
            self.release()

    def release(self) -> None:
        """This event is through (also when it failed, or was deferred before its turn):
        the next event of the destination goes once those before this one are through too.
        (Let go at once, it would pass those still being handled: a deferred event, say,
        ahead of one waiting for its filters.)"""
        if self._released:
            return
        self._released = True
        if self._before is None or self._before.done():
            self._through()
        else:
            self._before.add_done_callback(lambda _: self._through())

    def _through(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
            # (only now: forgotten while one before is pending, the next event taken would
            # go at once)
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
    keys = load_keyring()
    await keycheck.first(nc, keys, stop)  # before it opens or seals an event's data
    js = nc.jetstream()
    await bus.wait_streams(js, "dispatcher")
    await bus.serve_health(nc, "dispatcher")
    tel = tracing.Telemetry("dispatcher")
    tel.send_to_store(nc)
    events = await bus.Puller.bind(nc, subjects.CONSUMER_DISPATCHER)
    ticks = asyncio.create_task(Scheduler(nc, tel, keys).run(stop))
    waker = asyncio.create_task(Waker(nc).run(stop))
    turns = Turns()
    targets = StoreCache(
        ahead=True, fetch=fetch_targets, kind=Cache.TARGETS
    )  # (asked again while in use)
    await targets.watch(nc)
    evaluators = Evaluators(settings.filter_budget_ms)
    dispatcher = Dispatcher(nc, tel, targets, evaluators, keys)
    dispatcher.stopping = stop
    evaluators.stopping = stop  # (an evaluator starting, up to STARTUP, holds up no stop)
    service.settle_heap()
    log.info("dispatcher ready")

    admission = dispatcher.admission

    def room(busy: int) -> int:  # ``busy``: events of AK_EVENTS being handled
        return min(
            MAX_IN_FLIGHT - (busy - admission.judging), MAX_IN_FLIGHT + admission.total - busy
        )

    async with asyncio.TaskGroup() as intake:
        intake.create_task(_take(events, room, dispatcher, turns, False, stop))
        intake.create_task(_take_back(dispatcher, turns, stop))
    await asyncio.gather(ticks, waker, return_exceptions=True)
    await evaluators.close()
    await events.close()
    await tel.close()
    await bus.close(nc)


async def _take_back(dispatcher: Dispatcher, turns: Turns, stop: asyncio.Event) -> None:
    """Defers events and takes them back once ``AK_DEFERRED`` is there: the store makes it
    as it starts, when JetStream has room for it."""
    js, said = dispatcher.nc.jetstream(), False
    while not stop.is_set():
        try:
            await js.stream_info(subjects.STREAM_DEFERRED)
            break
        except NotFoundError:
            if not said:
                why = bus.OPTIONAL_STREAMS[subjects.STREAM_DEFERRED]
                log.warning("%s is not there (yet): %s", subjects.STREAM_DEFERRED, why)
                said = True
        except NatsError as e:  # NATS away: asked again
            log.debug("looking for %s: %s", subjects.STREAM_DEFERRED, e)
        await waitfor.pause(stop, 5.0)
    if stop.is_set():
        return
    if said:
        log.info("%s is there: deferring events when needed", subjects.STREAM_DEFERRED)
    takeback = TakeBack(dispatcher, turns, MAX_TAKEN_BACK)
    dispatcher.on_deferred = takeback.deferred
    dispatcher.deferring = True
    await takeback.run(stop)


def _left(admission: Admission, key: str, _: asyncio.Task[None]) -> None:
    admission.leave(key)


async def _take(
    puller: bus.Puller,
    room: Callable[[int], int],
    dispatcher: Dispatcher,
    turns: Turns,
    deferred: bool,
    stop: asyncio.Event,
) -> None:
    """Hands the events of one consumer to ``dispatcher`` until ``stop``, as many at once
    as ``room`` allows given how many it is handling; then waits for those."""
    tasks: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        free = room(len(tasks))
        if free <= 0:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=1.0)
            continue
        for msg in await puller.take(free):
            event = await bus.decode_or_drop(wire.Event, msg, "event")
            if event is None:
                continue
            key = event.destination_id
            turn = turns.take(key)
            crowded = not deferred and dispatcher.admission.enter(key)
            task = asyncio.create_task(dispatcher.handle(msg, event, turn, deferred, crowded))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if not deferred:
                task.add_done_callback(functools.partial(_left, dispatcher.admission, key))
    await asyncio.gather(*tasks, return_exceptions=True)
