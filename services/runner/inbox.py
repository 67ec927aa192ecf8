"""A live session's inbox: events, signals and stop requests sent to ``ak.inbox.<session>``."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from akcore import subjects, wire
from akcore.datakey import Keyring
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)

Key = Callable[[wire.InboxMessage], str | None]


def seal_payload(keys: Keyring, msg: wire.InboxMessage, session_id: str) -> wire.InboxMessage:
    """A signal's payload or a child's return value (what a handler produced) as it rests
    in the inbox of session ``session_id``: sealed, bound to that session, kind and name."""
    if not msg.payload:
        return msg
    sealed = keys.seal(msg.payload, _payload_aad(session_id, msg))
    return dataclasses.replace(msg, payload=sealed)


def open_payload(keys: Keyring, msg: wire.InboxMessage, session_id: str) -> bytes | None:
    """The payload of a message of this session's inbox, opened; raises SealError."""
    if not msg.payload:
        return msg.payload
    return keys.open(msg.payload, _payload_aad(session_id, msg))


def _payload_aad(session_id: str, msg: wire.InboxMessage) -> bytes:
    return f"{session_id}/inbox/{msg.kind}/{msg.name}".encode()


class Inbox:
    """Buffers the session's inbox in arrival order, skipping what earlier attempts took.

    Its consumer is created only when needed, since most sessions never get a message:
    when the inbox already holds messages as the session starts (``open``), when the
    session waits for one (``take``), or when the runner hears that one arrived
    (``InboxWatch``). It reads the inbox from its start, so nothing is missed."""

    CATCH_UP = 10.0  # seconds a wait whose time is up waits for messages sent before
    LOOKUP = 2.0  # seconds it waits for the inbox's last sequence (NATS away: none)
    FRESH = 1.0  # a consumer younger than this may not have delivered what is stored

    def __init__(
        self,
        js: JetStreamContext,
        session_id: str,
        consumed: set[int],
        on_stop: Callable[[str, bool], None],
        waiting: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.js, self.session_id, self.consumed, self.on_stop = js, session_id, consumed, on_stop
        self.waiting = waiting  # held while ``take`` waits for a message
        self.buffer: list[tuple[int, wire.InboxMessage]] = []
        self._child_ends: set[str] = set()  # the children whose end was read
        self._changed = asyncio.Event()
        self._sub: JetStreamContext.PushSubscription | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closed = False
        self._live_since = 0.0  # when its consumer was made (loop time; 0: not yet)
        self._pending = 0  # what JetStream had left to deliver as of the last delivery
        # Parking records these: the last stream sequence read, and the last one a waiting
        # ``take`` had looked at (messages after it may be what the wait waits for).
        self.last_seq = 0
        self.examined_seq = 0

    @property
    def reading(self) -> bool:
        """Whether the consumer was asked for (it may still be starting)."""
        return self._starting is not None

    async def open(self) -> None:
        """Starts reading now if something was sent to the session before it started
        (a stop request, a signal, a child's end); otherwise waits to be needed."""
        try:
            await self.js.get_last_msg(
                subjects.STREAM_INBOX, subjects.inbox_subject(self.session_id)
            )
        except NotFoundError:
            return
        except Exception as e:  # cannot tell: read it
            log.debug("inbox of %s: %s", self.session_id, e)
        await self.start()

    async def start(self) -> None:
        """Creates the consumer (once; concurrent callers wait for the same one)."""
        t = self._starting
        if t is None or (t.done() and (t.cancelled() or t.exception() is not None)):
            t = self._starting = asyncio.create_task(self._subscribe())  # first, or again
        await asyncio.shield(t)

    async def _subscribe(self) -> None:
        if self._closed:
            return
        self._sub = await self.js.subscribe(
            subjects.inbox_subject(self.session_id),
            stream=subjects.STREAM_INBOX,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._on_msg,
        )
        self._live_since = asyncio.get_running_loop().time()

    async def close(self) -> None:
        self._closed = True
        self._changed.set()  # a catch-up (``read_up_to_now``) ends
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as e:
                log.debug("inbox unsubscribe: %s", e)

    async def _on_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        self.last_seq = max(self.last_seq, seq)
        self._pending = msg.metadata.num_pending or 0
        self._changed.set()  # also for what it skips: ``read_up_to_now`` counts those
        try:
            item = wire.decode(wire.InboxMessage, msg.data)
        except Exception as e:
            if seq not in self.consumed:
                log.error("session %s: dropping malformed inbox message: %s", self.session_id, e)
            return
        if item.kind == wire.INBOX_CHILD_END:
            # A child ends once: a second copy (its end told again by a job delivered past
            # the duplicate window) is not a second end, whether the first was taken or not.
            if item.name in self._child_ends:
                log.info(
                    "session %s: child %s's end told again; dropped", self.session_id, item.name
                )
                return
            self._child_ends.add(item.name)
        if seq in self.consumed:
            return
        if item.kind == wire.INBOX_STOP:
            self.on_stop(item.reason, item.failed)
        else:
            self.buffer.append((seq, item))

    async def take(
        self, wanted: list[str], key: Key, timeout: float | None
    ) -> tuple[int, wire.InboxMessage] | None:
        """The oldest message whose ``key`` is ``wanted[0]``, else ``wanted[1]``, ...; waits
        up to ``timeout`` seconds (None: forever) for one to arrive. A message the inbox
        held before the time was up is taken though its consumer was slow to deliver it
        (one that was just made, as when a wake after the deadline resumes a parked wait
        with a timeout of 0)."""
        await self.start()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        caught_up = False
        while True:
            for w in wanted:
                for i, (seq, item) in enumerate(self.buffer):
                    if key(item) == w:
                        del self.buffer[i]
                        self.consumed.add(seq)
                        return seq, item
            self._changed.clear()
            self.examined_seq = self.last_seq  # every message read so far was looked at
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                if caught_up:
                    return None
                caught_up = True
                await self.read_up_to_now()
                continue
            try:
                with self.waiting():
                    await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def read_up_to_now(self) -> None:
        """Waits (up to CATCH_UP seconds) until the consumer has delivered every message
        the inbox holds now. Not asked of one that has been delivering for a while with
        nothing left (a handler polling with short timeouts pays no request per poll)."""
        loop = asyncio.get_running_loop()
        live = self._live_since and loop.time() - self._live_since >= self.FRESH
        if live and not self._pending:
            return
        subject = subjects.inbox_subject(self.session_id)
        try:
            async with asyncio.timeout(self.LOOKUP):
                last = (await self.js.get_last_msg(subjects.STREAM_INBOX, subject)).seq or 0
        except NotFoundError:
            return
        except Exception as e:  # NATS away: what was read is all there is
            log.warning("session %s: inbox not read to its end: %r", self.session_id, e)
            return
        until = loop.time() + self.CATCH_UP
        while self.last_seq < last and not self._closed:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), until - loop.time())
            except TimeoutError:
                log.warning(
                    "session %s: inbox read to #%d of #%d only",
                    self.session_id,
                    self.last_seq,
                    last,
                )
                return


class InboxWatch:
    """The runner's one subscription to every inbox subject (core NATS: a copy of each
    message as JetStream stores it): a message for a session of this runner whose inbox
    is not being read yet starts reading it."""

    SEEN = 100_000  # sessions remembered as having been sent something
    SKEW = 5.0  # seconds allowed between the NATS server's clock and ours

    def __init__(self) -> None:
        self.live: dict[str, Inbox] = {}
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._since = float("inf")  # messages sent before this may have been missed

    async def watch(self, nc: Client) -> None:
        prefix = len(subjects.inbox_subject(""))

        async def on_msg(msg: Msg) -> None:
            sid = msg.subject[prefix:]
            self._seen[sid] = time.time()
            self._seen.move_to_end(sid)
            if len(self._seen) > self.SEEN:
                _, evicted = self._seen.popitem(last=False)
                self._since = max(self._since, evicted)
            inbox = self.live.get(sid)
            if inbox is not None and not inbox.reading:
                task = asyncio.create_task(inbox.start())
                task.add_done_callback(_log_failure)

        self._since = time.time()
        await nc.subscribe(subjects.inbox_subject("*"), cb=on_msg)

    async def resync(self) -> None:
        """After a reconnect: messages sent while the runner was away were missed by this
        watch, so every live session whose inbox is not read yet looks at it now (a stop
        request must reach its session), and sessions queued before now are not assumed
        to have an empty inbox."""
        self._since = time.time()
        for inbox in list(self.live.values()):
            if not inbox.reading:
                task = asyncio.create_task(inbox.open())
                task.add_done_callback(_log_failure)

    def heard_all_since(self, queued_at: float) -> bool:
        """Whether every message sent to a session queued at ``queued_at`` (NATS server
        time) reached this watch; if so, a session it never heard of has an empty inbox."""
        return queued_at > self._since + self.SKEW

    def heard_of(self, session_id: str) -> bool:
        return session_id in self._seen


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("reading an inbox failed: %s", task.exception())
