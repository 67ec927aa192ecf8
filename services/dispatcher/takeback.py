"""Takes the events deferred to ``AK_DEFERRED`` back, per destination and in turns.

Each destination (trigger or connection) with deferred events has a durable consumer of its
own, ``deferred-<destination>`` (``bus.deferred_consumer``, made by the store when asked),
which several dispatchers share and JetStream removes once no dispatcher has used it for
``bus.DEFERRED_IDLE`` seconds. A dispatcher learns which destinations have deferred
events from its own deferrals at once, and from the stream every ``LOOK_EVERY`` seconds
(the events others deferred, or deferred before a restart); it takes their events back
in turns (``rotation.Rotation``), so that one destination's flood does not hold up
another's deferred events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

from akcore import bus, subjects, wire
from akcore.errors import AKError
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from .rotation import Rotation

if TYPE_CHECKING:
    from .service import Dispatcher, Turns

log = logging.getLogger(__name__)

# Seconds between looks at which destinations AK_DEFERRED holds events of.
LOOK_EVERY = 2.0
# Seconds a request for one destination's deferred events waits for them at most: the
# places it was dealt are held meanwhile.
EXPIRES = 1.0
# Destinations that join the turns per round at most (each costs a request or two).
JOIN_PER_ROUND = 32
DESTINATION = bus.DEFERRED_DESTINATION


class TakeBack:
    """Takes deferred events back for ``dispatcher``, up to ``total`` handled at once."""

    def __init__(self, dispatcher: Dispatcher, turns: Turns, total: int) -> None:
        self.dispatcher, self.turns = dispatcher, turns
        self.rotation = Rotation(total, bus.DEFERRED_SHARE, bus.MAX_DEFERRED_CONSUMERS)
        self.arrived = asyncio.Event()  # a message arrived, a request ended, one was handled
        self._pullers: dict[str, bus.Puller] = {}  # of the destinations taking turns
        self._handling: dict[str, int] = {}  # by destination
        self._tasks: set[asyncio.Task[None]] = set()
        self._wanted: dict[str, None] = {}  # destinations this dispatcher deferred, to join
        self._seen: list[str] = []  # destinations found at the last look, to join
        self._consumers = 0  # of AK_DEFERRED: at the last look and made since
        self._said_full = False

    def deferred(self, key: str) -> None:
        """This dispatcher deferred an event of ``key``: it takes turns at once."""
        if key not in self.rotation:
            self._wanted[key] = None
            self.arrived.set()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_look = loop.time()
        try:
            while not stop.is_set():
                self.arrived.clear()
                if loop.time() >= next_look:
                    await self._look()
                    next_look = loop.time() + LOOK_EVERY
                try:
                    await self._join()
                    await self._take()
                    await self._leave()
                    await self._ask()
                except NatsError as e:  # NATS away: the next round tries again
                    log.warning("taking deferred events back: %s", e)
                    await asyncio.sleep(0.5)
                wait = max(0.05, min(1.0, next_look - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), wait)
        finally:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for puller in self._pullers.values():
                await puller.close()

    async def _look(self) -> None:
        """Which destinations ``AK_DEFERRED`` holds events of (JetStream says at most
        100,000 at a time; at most ``MAX_DEFERRED_CONSUMERS`` of them, picked at random,
        join the turns)."""
        js = self.dispatcher.nc.jetstream()
        try:
            info = await js.stream_info(subjects.STREAM_DEFERRED, subjects.DEFERRED_ALL)
        except NatsError as e:  # NATS away: at the next look
            log.debug("looking at %s: %s", subjects.STREAM_DEFERRED, e)
            return
        self._consumers = info.state.consumer_count or 0
        found = [subjects.deferred_destination(s) for s in info.state.subjects or {}]
        seen = [k for k in found if k not in self.rotation]
        random.shuffle(seen)
        self._seen = seen[: bus.MAX_DEFERRED_CONSUMERS]

    async def _join(self) -> None:
        """Destinations deferred here or found at the last look join the turns, each with
        its consumer (made when it is not there and there are fewer than the most). Each
        is tried once, up to ``JOIN_PER_ROUND`` a round: one that did not join is found
        again at a later look (its events are in the stream)."""
        tried = 0
        while (self._wanted or self._seen) and tried < JOIN_PER_ROUND:
            if self._wanted:
                key = next(iter(self._wanted))
                del self._wanted[key]
            else:
                key = self._seen.pop()
            if key in self.rotation or not DESTINATION.fullmatch(key):
                continue
            tried += 1
            joined = None if self.rotation.full else await self._bind(key)
            if joined is None:  # at the most
                self._at_the_most(len(self.rotation) if self.rotation.full else self._consumers)
                self._wanted.clear()
                self._seen = []
            elif not joined:  # the store or NATS away: the others at a later look (each
                return  # asked now would wait for it, holding up the turns of the rest)

    async def _bind(self, key: str) -> bool | None:
        """Whether ``key`` joined the turns; None when it cannot for there are as many
        consumers as there may be."""
        name = subjects.deferred_consumer(key)
        try:
            # made by the store (a dispatcher's user may not make or change consumers)
            made = await bus.store_call(
                self.dispatcher.nc, "deferred.consumer", {"destination_id": key}, timeout=2.0
            )
            if made.get("full"):
                return None
            self._said_full = False  # (said again when it comes to the most again)
            puller = await bus.Puller.of(
                self.dispatcher.nc, subjects.STREAM_DEFERRED, name, EXPIRES, arrived=self.arrived
            )
        except (NatsError, AKError) as e:  # away, or refused
            log.warning("deferred events of %s: not taken back yet (%s)", key, e)
            return False
        self._pullers[key] = puller
        self.rotation.add(key)
        return True

    def _at_the_most(self, n: int) -> None:
        if not self._said_full:
            log.warning(
                "%d destinations have consumers of their deferred events, the most: those of "
                "further destinations wait in %s until one is gone",
                n,
                subjects.STREAM_DEFERRED,
            )
            self._said_full = True

    async def _take(self) -> None:
        """Hands the events delivered to the dispatcher, in the order they came."""
        for key, puller in self._pullers.items():
            for msg in puller.take_ready():
                await self._handle(key, msg)

    async def _handle(self, key: str, msg: Msg) -> None:
        event = await bus.decode_or_drop(wire.Event, msg, "event")
        if event is None:
            return
        turn = self.turns.take(event.destination_id)  # in the order taken back
        task = asyncio.create_task(self.dispatcher.handle(msg, event, turn, True))
        self._handling[key] = self._handling.get(key, 0) + 1
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._handling[key] -= 1
            if not self._handling[key]:
                del self._handling[key]
            self.arrived.set()

        task.add_done_callback(done)

    async def _ask(self) -> None:
        """Asks each destination for the places the turns deal it."""
        held = {k: self._handling.get(k, 0) + p.held for k, p in self._pullers.items()}
        asking = {k: p.asking for k, p in self._pullers.items()}
        for key, n in self.rotation.deal(held, asking).items():
            try:
                await self._pullers[key].ask(n)
            except Exception as e:  # disconnected: asked again next round
                log.warning("pull request failed: %s", e)

    async def _leave(self) -> None:
        """A destination whose last request found nothing, and none of whose events is
        being handled here, leaves the turns (until its next deferral or look)."""
        for key, puller in list(self._pullers.items()):
            if puller.came_empty and not puller.held and not self._handling.get(key):
                del self._pullers[key]
                self.rotation.remove(key)
                await puller.close()
