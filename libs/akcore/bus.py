"""NATS connection, JetStream stream bootstrap and the store request/reply client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import AuthorizationError, MaxPayloadError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import config, natsauth, ops, subjects, tracing, waitfor, wire
from . import service as akservice
from .errors import AKError, InvalidArgument, NotFound, Unavailable, error_from_kind
from .retention import Retention

# nats-py waits for every request's answer with asyncio.wait_for, looked up as it is called.
waitfor.install()

log = logging.getLogger(__name__)
T = TypeVar("T")

DUPLICATE_WINDOW = 120.0


def streams(keep: Retention) -> tuple[StreamConfig, ...]:
    """The streams of DESIGN.md with their limits. Full, a stream refuses new messages
    (``discard: new``): nothing it accepted is dropped to make room. Events also age out;
    journals, inboxes and replay chunks are purged as their sessions end (the store sees to
    it)."""

    def limited(name: str, subject: str, max_bytes: int, max_age: float = 0.0) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            max_age=max_age,
            max_bytes=max_bytes,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            duplicate_window=min(DUPLICATE_WINDOW, max_age or DUPLICATE_WINDOW),
        )

    return (
        limited(
            subjects.STREAM_EVENTS, subjects.EVENTS_ALL, keep.events_max_bytes, keep.events_age
        ),
        StreamConfig(
            name=subjects.STREAM_JOBS,
            subjects=[subjects.JOBS_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=0.0,
            max_bytes=-1,  # one small message per live session
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
        ),
        limited(subjects.STREAM_JOURNAL, subjects.JOURNAL_ALL, keep.journal_max_bytes),
        limited(subjects.STREAM_INBOX, subjects.INBOX_ALL, keep.journal_max_bytes),
        limited(subjects.STREAM_REPLAY, subjects.REPLAY_ALL, keep.journal_max_bytes),
        StreamConfig(
            name=subjects.STREAM_DEFERRED,
            subjects=[subjects.DEFERRED_ALL],
            retention=RetentionPolicy.WORK_QUEUE,  # gone once dispatched
            max_age=0.0,  # a deferred event waits for its turn however long that takes
            max_bytes=keep.events_max_bytes,  # copies of some of AK_EVENTS
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
        ),
    )


# The limits reconciled on existing streams (the rest keeps what the operator set).
_LIMITS = ("max_age", "max_bytes", "discard", "duplicate_window")


# Ceiling on live sessions of one lane of AK_JOBS across all runners: a live session holds
# its job un-acked.
MAX_LIVE_SESSIONS = 4096
# A message held by a process that died (a job, an event being dispatched, a journal record
# being materialized) moves on this soon; runners heartbeat their jobs well within it.
# Every service reconciles the consumers with it as it starts.
JOB_ACK_WAIT = config.or_default(config.job_ack_wait, 15.0)


def _durable(name: str, subject: str, max_ack_pending: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=JOB_ACK_WAIT,
        max_ack_pending=max_ack_pending,
        filter_subject=subject,
    )


# Durable consumers, created with the streams so that no event accepted by ingress can
# arrive before its consumers exist (they start from the beginning of their stream).
# The store's consumers apply batches in stream order (several stores split the stream
# between them; materializing does not depend on the order across sessions).
CONSUMERS = {
    subjects.CONSUMER_DISPATCHER: (
        subjects.STREAM_EVENTS,
        _durable(subjects.CONSUMER_DISPATCHER, subjects.EVENTS_ALL, 1024),
    ),
    # (Before the lanes': earlier versions read all of AK_JOBS through it, and a work queue
    # makes no consumer whose subjects overlap another's: it is narrowed first.)
    subjects.CONSUMER_RUNNER: (
        subjects.STREAM_JOBS,
        _durable(subjects.CONSUMER_RUNNER, subjects.JOBS_UNLANED, MAX_LIVE_SESSIONS),
    ),
    **{
        subjects.lane_consumer(n): (
            subjects.STREAM_JOBS,
            _durable(subjects.lane_consumer(n), subjects.lane_jobs(n), MAX_LIVE_SESSIONS),
        )
        for n in range(subjects.JOB_LANES)
    },
    subjects.CONSUMER_STORE_JOURNAL: (
        subjects.STREAM_JOURNAL,
        _durable(subjects.CONSUMER_STORE_JOURNAL, subjects.JOURNAL_ALL, 1024),
    ),
    subjects.CONSUMER_STORE_EVENTS: (
        subjects.STREAM_EVENTS,
        _durable(subjects.CONSUMER_STORE_EVENTS, subjects.EVENTS_ALL, 1024),
    ),
}


# Consumers of earlier versions that this one deletes (``ensure_streams``): the single
# consumer of all deferred events, replaced by one per destination (``deferred_consumer``);
# the events it held stay in the stream and are taken back by those.
RETIRED_CONSUMERS = natsauth.RETIRED_DURABLES

# The consumers of AK_DEFERRED, one per destination with deferred events (the store makes
# them when a dispatcher finds such a destination): how many of its events JetStream hands out
# at once, across all dispatchers, and how long one no dispatcher asks for events (nor
# holds one) lives on before JetStream removes it.
DEFERRED_SHARE = 8
DEFERRED_IDLE = 30.0
# The most consumers of AK_DEFERRED the store makes for the dispatchers (about: several
# stores asked at once may each make one more). A destination deferred beyond them waits, its
# events kept, until the consumer of one whose deferred events were all taken back is gone.
MAX_DEFERRED_CONSUMERS = 256


# A destination id that can end a subject and a consumer's name (deferred only then).
DEFERRED_DESTINATION = re.compile(r"[A-Za-z0-9_-]{1,128}")


async def make_deferred_consumer(js: JetStreamContext, destination_id: str) -> dict[str, bool]:
    """The store's side of ``deferred.consumer``: makes the destination's consumer of
    ``AK_DEFERRED`` (``deferred_consumer``) unless it is there; ``full`` when there are
    ``MAX_DEFERRED_CONSUMERS`` already (the destination's events wait until one is gone)."""
    if not DEFERRED_DESTINATION.fullmatch(destination_id):
        raise InvalidArgument(f"{destination_id[:40]!r} is not a destination id")
    name = subjects.deferred_consumer(destination_id)
    want = deferred_consumer(destination_id)
    try:
        have = await js.consumer_info(subjects.STREAM_DEFERRED, name)
        if _as_made(have.config, want):
            return {"full": False}
        # Made otherwise (by a user that could once make consumers: a push consumer
        # delivering elsewhere, a window of one): its events stay in the stream and go
        # to the one made again.
        log.warning(
            "consumer %s of %s was not as the store makes it; made again",
            name,
            subjects.STREAM_DEFERRED,
        )
        await js.delete_consumer(subjects.STREAM_DEFERRED, name)
    except NotFoundError:
        pass
    info = await js.stream_info(subjects.STREAM_DEFERRED)
    if (info.state.consumer_count or 0) >= MAX_DEFERRED_CONSUMERS:
        return {"full": True}
    await js.add_consumer(subjects.STREAM_DEFERRED, want)
    return {"full": False}


def _as_made(have: ConsumerConfig, want: ConsumerConfig) -> bool:
    """Whether a consumer can be trusted with what ``want`` is made for: a pull consumer
    (no deliver subject) of the same subject, delivering every event, each one whole, until
    acked, with a window at least as wide and an ack wait of a second at least. Not equality:
    the server rounds durations (4.1 s comes back as 4.0999...), and stores of two versions
    or settings (a rolling upgrade) would otherwise make it again and again, each time
    handing out anew the events a dispatcher holds."""
    return (
        not (have.deliver_subject or have.deliver_group or have.filter_subjects)
        and not (have.headers_only or have.rate_limit_bps or have.backoff or have.pause_until)
        and have.filter_subject == want.filter_subject
        and have.ack_policy == want.ack_policy
        and have.deliver_policy == want.deliver_policy
        and (have.max_deliver or -1) == -1
        and (have.max_ack_pending or 0) >= (want.max_ack_pending or 0)
        and (have.ack_wait or 0) >= 1.0
    )


def deferred_consumer(destination_id: str) -> ConsumerConfig:
    """The consumer of ``AK_DEFERRED`` that takes one destination's events back, oldest
    first (a work queue: each deferred event is removed once acked)."""
    name = subjects.deferred_consumer(destination_id)
    return dataclasses.replace(
        _durable(name, subjects.deferred_subject(destination_id), DEFERRED_SHARE),
        name=name,  # made through CONSUMER.CREATE.<stream>.<name>.<filter>: see natsauth
        inactive_threshold=DEFERRED_IDLE,
    )


def server_list(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222``: the servers of one cluster, any of which will do."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise ValueError("no NATS URL given")
    return servers


def replicas() -> int:
    """How many copies of each stream a JetStream cluster keeps (``AK_NATS__REPLICAS``)."""
    return config.nats_replicas()


PING_INTERVAL = 4.0


class CredentialsRefused(AKError):
    """NATS refused the connection's credentials (or it had none and they are required)."""

    kind = "unauthenticated"


def error_text(e: BaseException) -> str:
    """An error of the client's connection as one line of the log: its text without the
    ``nats: `` nats-py puts first (the line says it already), or its kind when it has none
    (an ``OSError`` or ``TimeoutError`` from the socket gave an empty ``nats: ``)."""
    text = str(e).strip()
    text = text.removeprefix("nats: ").strip()
    return text or type(e).__name__


def _is_refusal(e: Exception) -> bool:
    return isinstance(e, AuthorizationError) or "authorization violation" in str(e).lower()


def _where(url: str) -> str:
    """``host:port`` of a server: never the credentials a URL may hold."""
    u = urlsplit(url if "://" in url else f"nats://{url}")
    return f"{u.hostname}:{u.port or 4222}"


# Seconds between two log lines of a service whose reconnects the server refuses.
REFUSED_EVERY = 60.0


def _refused(url: str, name: str, user: str) -> CredentialsRefused:
    where = ", ".join(_where(u) for u in server_list(url))
    what = f"the credentials of user {user!r}" if user else "a connection without credentials"
    return CredentialsRefused(
        f"NATS at {where} refused {what} ({name}): set {config.ENV_NATS_USER} and "
        f"{config.ENV_NATS_PASSWORD} (or {config.ENV_NATS_PASSWORD_FILE}) to this service's "
        "user and password (`ak up` makes them for its own NATS; see docs/deploy.md)"
    )


_services: weakref.WeakKeyDictionary[Client, str] = weakref.WeakKeyDictionary()


async def connect_service(
    settings: config.Settings,
    service: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """``connect`` as one of the services, with its credentials from ``settings`` and its
    own inbox prefix (only its user may read the replies sent there). A connection closed
    for good (``connect``'s ``on_lost``) ends the service, whose supervisor restarts it:
    a service without NATS serves nothing (a runner would run no session again)."""
    nc = await connect(
        settings.nats_url,
        f"ak-{service}",
        on_reconnect,
        user=settings.nats_user,
        password=settings.nats_password,
        inbox_prefix=natsauth.inbox_prefix(service),
        on_lost=akservice.end,
    )
    _services[nc] = service
    return nc


async def connect(
    url: str,
    name: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    user: str = "",
    password: str = "",
    inbox_prefix: str = "_INBOX",
    on_lost: Callable[[str], None] | None = None,
) -> Client:
    """Connects to any server of the list, with unlimited reconnects to any of them, so a
    NATS restart or the loss of one cluster node never kills a service. ``on_reconnect``
    runs after each reconnect (core-NATS messages sent meanwhile were missed). Raises
    ``CredentialsRefused`` when the server refuses the credentials (or their absence).

    Reconnects do not cover everything: a server that ends the connection with an error
    (``-ERR``: a message announced over its limit, a command it cannot parse) leaves it
    closed for good, as nats-py takes every such error. ``on_lost`` is then told what
    happened (one line), unless the connection's owner closed it."""
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[None] = loop.create_future()
    said_refused = [-REFUSED_EVERY, 0]  # when a refused reconnect was last said; since then

    def say_refused() -> None:
        """Says a refused reconnect: the first, then once every ``REFUSED_EVERY`` seconds
        with how many there were (one line per try, twice a second, flooded the log)."""
        said_refused[1] += 1
        if loop.time() - said_refused[0] < REFUSED_EVERY:
            return
        more = said_refused[1] - 1
        again = f" ({more} more refusals since last said)" if more else ""
        log.error("nats: %s%s", _refused(url, name, user).message, again)
        said_refused[:] = [loop.time(), 0]

    async def on_error(e: Exception) -> None:
        if not _is_refusal(e):
            log.warning("nats: %s", error_text(e))
        elif connecting.done():  # reconnecting: it goes on trying (a server may disagree)
            say_refused()
        elif not refused.done():  # the first connection: the caller hears of it
            refused.set_result(None)

    async def on_disconnect() -> None:
        if not nc.is_closed:  # closed: the service closed it, as it stops
            log.warning("nats: disconnected, reconnecting")

    async def on_reconnected() -> None:
        where = nc.connected_url
        log.info("nats: reconnected to %s", f"{where.hostname}:{where.port}" if where else "?")
        if on_reconnect is not None:
            await on_reconnect()

    async def on_closed() -> None:
        if nc.asked_to_close:
            return
        said = nc.last_error or "without an error"
        why = f"the NATS connection of {name} was closed for good ({said})"
        if on_lost is None:
            log.error("%s", why)
        else:
            on_lost(why)

    options: dict[str, Any] = {  # (the client's annotations say int; seconds may be floats)
        "reconnect_time_wait": 0.5,
        # A server that stops answering (frozen, or cut off) is left for another within
        # about 10 s, instead of the client's default of minutes.
        "ping_interval": PING_INTERVAL,
    }
    nc = CancellableClient()
    connecting = asyncio.ensure_future(
        nc.connect(
            servers=server_list(url),
            name=name,
            user=user or None,
            password=password or None,
            inbox_prefix=inbox_prefix,
            max_reconnect_attempts=-1,
            max_outstanding_pings=2,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnected,
            closed_cb=on_closed,
            **options,
        )
    )
    await asyncio.wait((connecting, refused), return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():  # it would try again forever with the same credentials
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        raise _refused(url, name, user)
    connecting.result()
    return nc


def header_bytes(headers: dict[str, str] | None) -> int:
    """What a message's headers take of NATS's message limit, as nats-py writes them
    (``NATS/1.0``, a line per header, a blank line); 0 for none."""
    if not headers:
        return 0
    size = len(b"NATS/1.0\r\n\r\n")
    for k, v in headers.items():
        if key := k.strip():
            size += len(key.encode()) + len(str(v).strip().encode()) + 4  # ": ", CRLF
    return size


class CancellableClient(Client):
    """nats-py's client, mended in two ways (a test of each fails once nats-py is):

    - A publish no longer swallows a cancel. ``Client._flush_pending`` catches
      ``CancelledError``: a task cancelled while its publish waits for the flusher (a
      message over the client's 2 MiB buffer always does; any does while the buffer is
      backed up) went on as if nothing had happened (a heartbeat loop heartbeated on, an
      ``asyncio.timeout`` did not fire). It is raised again once the message is queued
      (what was sent stays sent). Subscribes and other commands are left as nats-py has
      them (cancelled in their flush, they go on: a subscription then is registered).
    - A flush that timed out or was cancelled no longer stops the client reading: its PONG
      came later, ``_process_pong`` set a result on the cancelled future, and the
      ``InvalidStateError`` ended the read loop (the connection heard nothing until the
      stale-connection check reconnected it, ~12 s).

    And it tells a close its owner asked for (``asked_to_close``) from one it did not:
    nats-py calls the closed callback for both.
    """

    asked_to_close = False  # close() or drain() called: the closed callback is expected

    async def close(self) -> None:
        # (nats-py calls it too, from its reconnecting task, when reconnects run out)
        if asyncio.current_task() is not self._reconnection_task:
            self.asked_to_close = True
        await super().close()

    async def drain(self) -> None:
        self.asked_to_close = True
        await super().drain()

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        # NATS counts a message's headers with its data against its limit; nats-py checks
        # the data alone. A message the headers take over the limit was sent, and the
        # server closed the connection for it ("maximum payload exceeded"), which nats-py
        # then took as closed for good: the service stayed up without NATS (a handler's
        # activity result, value or child's inputs sized so did that to its runner, an
        # event of `ak event dispatch` to ingress). Refused here, as one over by its data.
        limit = self._max_payload
        if headers and limit and len(payload) + header_bytes(headers) > limit:
            raise MaxPayloadError
        task = asyncio.current_task()
        before = task.cancelling() if task is not None else 0
        await super().publish(subject, payload, reply, headers)
        if task is not None and task.cancelling() > before:
            prefix = (self._resp_sub_prefix or b"").decode()
            if reply and prefix and reply.startswith(prefix):  # a request's: nothing waits
                answer = self._resp_map.get(reply[len(prefix) :])  # for its answer now
                if answer is not None:
                    answer.cancel()  # (which takes it out of the map)
            raise asyncio.CancelledError

    async def _process_pong(self) -> None:
        # (nats-py 2.16's, but for the ``done()``: a flush given up on left its future)
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0


def may_pass(e: BaseException) -> bool:
    """Whether a failure may pass by itself: NATS (the connection, a timeout, no responder,
    JetStream busy, electing a leader or full: its 5xx), or the store away. A JetStream
    4xx (a request it refuses) or any other error would only repeat."""
    if isinstance(e, APIError):  # (a message of the same id in flight: answered on a retry)
        return (e.code or 0) >= 500 or e.err_code == ERR_DUPLICATE_IN_PROCESS
    if isinstance(e, MaxPayloadError):  # a message over the limit is so every time
        return False
    return isinstance(e, (NatsError, Unavailable, asyncio.TimeoutError, ConnectionError))


# JetStream refusing a write whose expected last (subject) sequence is not the stream's:
# 10071; a clustered stream's leader says 10164 (no number in it) while another message of
# the subject is on its way in (it may be this writer's own earlier try: ask again).
ERR_WRONG_LAST_IN_FLIGHT = 10164
ERR_WRONG_LAST_SEQUENCE = frozenset({10071, ERR_WRONG_LAST_IN_FLIGHT})
# A clustered stream refusing a message whose id (Nats-Msg-Id) is on its way in already:
# a retry is answered as a duplicate, or stored if that one was not.
ERR_DUPLICATE_IN_PROCESS = 10158


def is_wrong_last(e: BaseException) -> bool:
    """A write refused as out of turn (``Nats-Expected-Last-Subject-Sequence``)."""
    return isinstance(e, APIError) and e.err_code in ERR_WRONG_LAST_SEQUENCE


def is_full(e: BaseException) -> bool:
    """A stream at its limit refused the message (``discard: new``)."""
    return isinstance(e, APIError) and "exceeded" in (e.description or "")


class Publisher:
    """Acknowledged JetStream publishes, as ``JetStreamContext.publish`` (the same errors
    when no stream answers, the stream refuses or the acknowledgement times out) for about
    a third less CPU: one reply subscription serves all of them and a timer, not a task,
    bounds each wait. Every session publishes several records, so this is on the hot path
    of every service. ``bus.publisher(nc)`` gives the connection's one instance."""

    TIMEOUT = 5.0

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._n = 0
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._subscribed = False

    def _on_reply(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _expire(self, reply: str) -> None:
        fut = self._waiting.pop(reply, None)
        if fut is not None and not fut.done():
            fut.set_exception(NatsTimeout())

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (0: not known yet)."""
        return int(getattr(self._nc, "max_payload", 0) or 0)

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Returns JetStream's acknowledgement (``stream``, ``seq``, ``duplicate``)."""
        if not self._subscribed:  # queued before this publish: its reply cannot be missed
            await subscribe_at_once(self._nc, self._prefix + ".*", self._on_reply)
            self._subscribed = True  # (publishes racing this may subscribe twice: harmless)
        self._n += 1
        reply = f"{self._prefix}.{self._n}"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self._waiting[reply] = fut
        timer = loop.call_later(timeout or self.TIMEOUT, self._expire, reply)
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
            msg = await fut
        finally:
            timer.cancel()
            self._waiting.pop(reply, None)
        if not msg.data and (msg.headers or {}).get("Status") == "503":
            raise NoStreamResponseError
        ack: dict[str, Any] = json.loads(msg.data)
        if "error" in ack:
            raise APIError.from_error(ack["error"])  # raises the error's own class
        return ack

    async def publish_within(
        self, seconds: float, subject: str, payload: bytes, headers: dict[str, str]
    ) -> dict[str, Any]:
        """``publish``, tried again while it fails for a reason that may pass (a cluster
        electing a stream's leader after losing a node takes a few seconds), for up to
        ``seconds``. ``headers`` must carry a ``Nats-Msg-Id``: a try that was stored after
        all makes the next one a duplicate, not a second message. When a try went
        unanswered (it may be stored yet), giving up raises ``asyncio.TimeoutError``
        whatever the last try's error was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        pause = 0.1
        unanswered = False
        while True:
            left = deadline - loop.time()
            try:
                return await self.publish(subject, payload, headers, max(0.1, min(2.0, left)))
            except Exception as e:
                timed_out = isinstance(e, asyncio.TimeoutError)
                unanswered |= timed_out
                if not may_pass(e) or is_full(e) or loop.time() + pause >= deadline:
                    if unanswered and not timed_out:
                        raise TimeoutError(f"a try went unanswered; the last: {e!r}") from e
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


_publishers: weakref.WeakKeyDictionary[Client, Publisher] = weakref.WeakKeyDictionary()


class _AtOnce:
    """Stands in for the future of a subscription made with one (``subscribe(future=)``):
    nats-py hands each message of such a subscription to ``set_result`` in its read loop,
    instead of queueing it for a task of the subscription's own (``cb=``) that wakes up
    for every message. The handler must be quick and never raise (an error here would end
    the client's read loop): what it raises is logged and dropped."""

    def __init__(self, handler: Callable[[Msg], None]) -> None:
        self.handler = handler

    def cancelled(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        try:
            self.handler(msg)
        except Exception:
            log.exception("a subscription's handler failed on %s", msg.subject)


async def subscribe_at_once(nc: Client, subject: str, handler: Callable[[Msg], None]) -> Any:
    """A subscription whose messages go to ``handler`` as the client reads them (no task,
    no queue; see ``_AtOnce``); resubscribed on reconnect as any. ``unsubscribe()`` ends it."""
    return await nc.subscribe(subject, future=_AtOnce(handler))  # type: ignore[arg-type]


def publisher(nc: Client) -> Publisher:
    """The connection's ``Publisher``."""
    pub = _publishers.get(nc)
    if pub is None:
        pub = _publishers[nc] = Publisher(nc)
    return pub


async def ensure_streams(js: JetStreamContext, timeout: float = 60.0) -> None:
    """Creates the streams of DESIGN.md, their durable consumers and the KV buckets if
    missing, and keeps their limits; idempotent. Only the store's NATS user may (the others
    ``wait_streams``). Retries while JetStream is not ready yet (a cluster electing its
    leader)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    n = replicas()
    while True:
        try:
            # (An optional stream that fails for a reason that may pass is tried again
            # with the rest, but not past the deadline: the store starts without it.)
            await _ensure_streams(js, n, last_try=loop.time() + 2.0 > deadline)
            return
        except Exception as e:
            if loop.time() > deadline:
                raise
            log.warning("JetStream not ready (%s); retrying", e)
            await asyncio.sleep(1.0)


# Streams the system runs without: a server without room for them still runs everything
# else, and no service waits for them (nor for their consumers). Each with what is missed.
OPTIONAL_STREAMS = {
    subjects.STREAM_REPLAY: (
        "replays read journals record by record, which is slower for long sessions; give "
        "JetStream more storage (max_file_store) or lower AK_RETENTION__JOURNAL_MAX_BYTES"
    ),
    subjects.STREAM_DEFERRED: (
        "dispatchers cannot defer the events of a trigger flooded with events for its "
        "filter, which then hold up other triggers' events; give JetStream more storage "
        "(max_file_store) or lower AK_RETENTION__EVENTS_MAX_BYTES, and restart the store"
    ),
}
ERR_NO_ROOM = 10047  # JetStream: insufficient storage resources available


async def _ensure_streams(js: JetStreamContext, n: int, last_try: bool = True) -> None:
    existing = {info.config.name: info.config for info in await js.streams_info()}
    missing = set()
    for cfg in streams(Retention.from_env()):
        try:
            await _ensure_stream(js, cfg, existing.get(cfg.name), n)
        except Exception as e:
            no_room = isinstance(e, APIError) and e.err_code == ERR_NO_ROOM
            if cfg.name not in OPTIONAL_STREAMS or (may_pass(e) and not no_room and not last_try):
                raise
            log.warning(
                "stream %s could not be made (%s): %s",
                cfg.name,
                getattr(e, "description", None) or repr(e),
                OPTIONAL_STREAMS[cfg.name],
            )
            missing.add(cfg.name)
    for stream, name in RETIRED_CONSUMERS:
        if stream in missing or stream not in existing:
            continue
        try:
            await js.delete_consumer(stream, name)
            log.info("consumer %s of %s: deleted (retired)", name, stream)
        except NotFoundError:
            pass
        except Exception as e:  # (NATS refuses the request: a timeout) not worth not starting
            if may_pass(e) and not last_try:
                raise
            log.warning(
                "consumer %s of %s could not be deleted (%s): the dispatchers take no deferred "
                "event back until it is; on a NATS server of your own, give the users what "
                "`ak nats-config` prints now, and restart the store",
                name,
                stream,
                getattr(e, "description", None) or repr(e),
            )
    for name, (stream, ccfg) in CONSUMERS.items():
        if stream in missing:
            continue
        try:
            info = await js.consumer_info(stream, name)
        except NotFoundError:
            await js.add_consumer(stream, ccfg)
            continue
        have = info.config
        kept = ("ack_wait", "max_ack_pending", "filter_subject")
        if any(getattr(have, k) != getattr(ccfg, k) for k in kept):
            # made by a version (or with a setting) of its own: follow this one
            log.info(
                "consumer %s: ack wait %ss, max ack pending %s, subjects %s",
                name,
                ccfg.ack_wait,
                ccfg.max_ack_pending,
                ccfg.filter_subject,
            )
            await js.add_consumer(stream, ccfg)
    for bucket in natsauth.BUCKETS:
        have = existing.get(f"KV_{bucket}")
        if have is None:
            await js.create_key_value(KeyValueConfig(bucket=bucket, history=KV_HISTORY, replicas=n))
        elif (have.max_msgs_per_subject or 0) < KV_HISTORY:  # made by an earlier version
            log.info("bucket %s: keeps up to %d versions of a key", bucket, KV_HISTORY)
            await js.update_stream(dataclasses.replace(have, max_msgs_per_subject=KV_HISTORY))


async def _ensure_stream(
    js: JetStreamContext, cfg: StreamConfig, have: StreamConfig | None, n: int
) -> None:
    if have is None:
        await js.add_stream(dataclasses.replace(cfg, num_replicas=n))
        return
    want = {k: getattr(cfg, k) for k in _LIMITS}
    if any(getattr(have, k) != v for k, v in want.items()):
        log.info("stream %s: limits %s", cfg.name, want)
        await js.update_stream(dataclasses.replace(have, **want))


async def wait_streams(js: JetStreamContext, service: str) -> None:
    """Waits until the store has created what ``ensure_streams`` creates (at once when it
    is there already), saying every so often what it waits for."""
    loop = asyncio.get_running_loop()
    said = loop.time()
    while True:
        missing = await _missing(js)
        if not missing:
            return
        if loop.time() - said >= 10.0:
            log.warning(
                "%s waits for the store to create %s (if the store is up: may this "
                "service's NATS user look at it? print `ak nats-config` again after an "
                "upgrade)",
                service,
                missing,
            )
            said = loop.time()
        await asyncio.sleep(0.5)


async def _missing(js: JetStreamContext) -> str:
    """The first stream, bucket or consumer ``ensure_streams`` makes that is not there
    yet ("" when all are)."""
    try:
        for stream in (*natsauth.STREAMS, *(f"KV_{b}" for b in natsauth.BUCKETS)):
            if stream in OPTIONAL_STREAMS:
                continue
            try:
                await js.stream_info(stream)
            except NotFoundError:
                return f"stream {stream}"
        for name, (stream, _) in CONSUMERS.items():
            if stream in OPTIONAL_STREAMS:
                continue
            try:
                await js.consumer_info(stream, name)
            except NotFoundError:
                return f"consumer {name} of {stream}"
    except Exception as e:  # JetStream not ready, NATS away: the same wait
        return f"the streams (JetStream: {e})"
    return ""


VALUES_BUCKET = natsauth.BUCKET_VALUES

# Versions of a key a KV bucket may hold, far more than the one a key needs: JetStream
# drops a version over the limit without writing that down (no tombstone), and once a
# delete and its purge left none of the key's later messages, such a version came back
# after nats-server was killed (nats-server 2.15: a deleted value, a woken session's
# parked entry). Every write is followed by ``keep_latest`` instead, whose removals are
# written down; deletes purge what they delete the same way.
KV_HISTORY = 64
PURGE_TIMEOUT = 1.0  # seconds a purge may take (NATS answers a refused one with nothing)
PURGE_PAUSE = 60.0  # seconds a bucket's purges are not tried after one failed
_purges_paused: dict[str, float] = {}  # bucket -> until when (time.monotonic())
_purge_said: set[str] = set()  # buckets whose failed purges were said (once)


async def keep_latest(js: JetStreamContext, bucket: str, key: str) -> None:
    """Removes the versions of ``key`` before its last one (after a write), so that none
    is left for the bucket's limit to drop unrecorded. Best effort, the write being done:
    after a purge that failed (refused by a NATS configuration from before this, which
    NATS answers with silence; or NATS away) the bucket's are not tried for
    ``PURGE_PAUSE`` seconds, so writes do not each wait for one. A version left then goes
    with the next purge of its key (a key written more than ``KV_HISTORY`` times meanwhile
    loses its oldest ones to the limit, as before)."""
    now = time.monotonic()
    if _purges_paused.get(bucket, 0.0) > now:
        return
    brief = js._nc.jetstream(timeout=PURGE_TIMEOUT)  # (the services' contexts wait 5 s)
    try:
        await brief.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}", keep=1)
    except Exception as e:
        _purges_paused[bucket] = now + PURGE_PAUSE
        if bucket not in _purge_said:
            _purge_said.add(bucket)
            log.warning(
                "bucket %s: the versions before a key's last one could not be removed (%s; "
                "not tried again for %gs); on a NATS server of your own, give the users "
                "what `ak nats-config` prints",
                bucket,
                "no answer"
                if isinstance(e, asyncio.TimeoutError)
                else getattr(e, "description", None) or e,
                PURGE_PAUSE,
            )


async def values_bucket(js: JetStreamContext) -> Any:
    """The KV bucket of the projects' values stores (``ensure_streams`` creates it)."""
    return await js.key_value(VALUES_BUCKET)


async def bind(js: JetStreamContext, consumer: str) -> JetStreamContext.PullSubscription:
    """Binds to one of the durable pull consumers of ``CONSUMERS``."""
    stream, _ = CONSUMERS[consumer]
    return await js.pull_subscribe_bind(consumer, stream=stream)


async def store_call(nc: Client, op: str, args: dict[str, Any], timeout: float = 10.0) -> Any:
    """Calls one store operation; raises the store's own error type on failure."""
    return await _call(nc, "store", subjects.store_subject(op), op, args, timeout)


async def runner_call(
    nc: Client, op: str, args: dict[str, Any], timeout: float = 10.0, patience: float = 0.0
) -> Any:
    """Calls one runner operation (any runner of the queue group answers). ``patience``:
    seconds to keep asking while no runner is there to answer (one restarting)."""
    subject = subjects.runner_subject(op)
    give_up = asyncio.get_running_loop().time() + patience
    while True:
        try:
            return await _call(nc, "runner", subject, op, args, timeout)
        except Unavailable as e:
            none_there = isinstance(e.__cause__, NoRespondersError)
            if not none_there or asyncio.get_running_loop().time() >= give_up:
                raise
        await asyncio.sleep(0.25)


async def _call(
    nc: Client, service: str, subject: str, op: str, args: dict[str, Any], timeout: float
) -> Any:
    caller = _services.get(nc)
    if caller is not None and not natsauth.may_call(caller, subject):
        raise NotFound(f"unknown operation {op!r} (not one the {caller} calls)")
    payload = wire.encode(wire.StoreRequest(args=args))
    # Inside a traced flow (a session, a webhook) the callee's span joins the trace.
    traced = trace.get_current_span().get_span_context().is_valid
    headers = tracing.inject() if traced else None
    try:
        msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
    except NoRespondersError as e:
        raise Unavailable(
            f"{service} did not answer {op!r}: is the {service} service running?"
        ) from e
    except NatsTimeout as e:  # taken, maybe, by one that is busy or frozen: it may still act
        if ops.changes_nothing(op):
            raise Unavailable(
                f"{service} did not answer {op!r} within {timeout:g} s (busy or paused): try again"
            ) from e
        raise Unavailable(
            f"{service} did not answer {op!r} within {timeout:g} s; one that took it may "
            f"still carry it out (a {service} busy or paused): look before asking again"
        ) from e
    reply = wire.decode(wire.StoreReply, msg.data)
    if not reply.ok:
        raise error_from_kind(reply.error_kind, reply.error)
    return reply.result


def internal(op: str, e: Exception, service: str) -> str:
    """Logs an unexpected error of operation ``op`` (with its traceback, under a reference)
    and gives what its caller is told: which error and where it was logged, never its
    text, which may quote a statement and what it touched."""
    ref = secrets.token_hex(4)
    log.error("request %s failed (error %s)", op, ref, exc_info=e)
    return (
        f"{op} failed with {type(e).__name__}: an internal error, logged as error {ref} by "
        f"{service} {os.getpid()}"
    )


class Room:
    """Where some of a service's requests are answered (``serve_requests``): ``at_once`` of
    them at a time, in the order they came, with up to ``waiting`` more taken from the
    subscription to wait for their turn."""

    def __init__(self, at_once: int, waiting: int) -> None:
        self.answering = asyncio.Semaphore(at_once)  # (its waiters go in turn)
        self.admitted = asyncio.Semaphore(at_once + waiting)


async def serve_requests(
    nc: Client,
    subject: str,
    handle: Callable[[str, dict[str, Any]], Awaitable[Any]],
    queue: str,
    telemetry: tracing.Telemetry | None = None,
    rooms: Callable[[str], Room] | None = None,
) -> Any:
    """Answers ``ak.<service>.<op>`` requests; ``handle(op, args)`` gives the result. A
    request that carries a trace context gets a server span.

    Requests are answered one at a time, in the order they came, unless ``rooms`` gives
    each operation's ``Room``: then the requests of each room are answered as it says,
    beside those of the others."""
    prefix_len = len(subject) - 1  # subject ends with ">"
    answering: set[asyncio.Task[None]] = set()

    async def answer(op: str, msg: Msg) -> wire.StoreReply:
        try:
            req = wire.decode(wire.StoreRequest, msg.data)
            result = await handle(op, req.args)
            return wire.StoreReply(ok=True, result=result)
        except AKError as e:
            return wire.StoreReply(ok=False, error_kind=e.kind, error=e.message)
        except Exception as e:  # one bad request must not stop the service
            return wire.StoreReply(ok=False, error_kind="internal", error=internal(op, e, queue))

    async def on_msg(msg: Msg) -> None:
        op = msg.subject[prefix_len:]
        if rooms is None:
            await respond(op, msg)
            return
        room = rooms(op)
        await room.admitted.acquire()  # (full: this and every request behind it wait)
        task = asyncio.create_task(respond_in(room, op, msg))
        answering.add(task)
        task.add_done_callback(answering.discard)

    async def respond_in(room: Room, op: str, msg: Msg) -> None:
        try:
            async with room.answering:
                await respond(op, msg)
        except Exception as e:  # (the connection closing: the caller asks again)
            log.debug("request %s: not answered: %s", op, e)
        finally:
            room.admitted.release()

    async def respond(op: str, msg: Msg) -> None:
        if telemetry is None or not (msg.headers or {}).get(subjects.HDR_TRACEPARENT):
            reply = await answer(op, msg)
        else:
            parent = tracing.extract(msg.headers)
            with telemetry.span(op, parent=parent, kind=SpanKind.SERVER) as span:
                reply = await answer(op, msg)
                if not reply.ok:
                    tracing.fail(span, reply.error_kind)
        data = wire.encode(reply)
        if len(data) > nc.max_payload:  # unsendable: say so rather than leave the caller waiting
            log.warning("reply to %s is %d bytes, over the message limit", op, len(data))
            data = wire.encode(
                wire.StoreReply(
                    ok=False,
                    error_kind=InvalidArgument.kind,
                    error=f"the answer to {op!r} is {len(data)} bytes, over the "
                    f"{nc.max_payload} byte message limit: ask for less (a smaller page or a "
                    "narrower filter)",
                )
            )
        await msg.respond(data)

    return await nc.subscribe(subject, queue=queue, cb=on_msg)


async def serve_health(nc: Client, service: str) -> Any:
    """Answers ``ak.health.<service>`` so ingress's /readyz can see every service."""

    async def on_msg(msg: Msg) -> None:
        await msg.respond(service.encode())

    return await nc.subscribe(subjects.health_subject(service), cb=on_msg)


async def ping_service(nc: Client, service: str, timeout: float = 1.0) -> bool:
    try:
        await nc.request(subjects.health_subject(service), b"", timeout=timeout)
        return True
    except Exception:
        return False


async def decode_or_drop(cls: type[T], msg: Msg, what: str) -> T | None:
    """The message as ``cls``; None when it cannot be decoded, in which case it is logged
    and terminated (redelivering it could never succeed)."""
    try:
        return wire.decode(cls, msg.data)
    except Exception as e:
        log.error("dropping malformed %s %s: %s", what, msg.subject, e)
        await msg.term()
        return None


# How a pull request with a byte limit ends when it delivered what it could: its bytes'
# worth, or its whole batch (said only to requests with a byte limit). Not refusals.
BYTES_SPENT = "Message Size Exceeds MaxBytes"
BATCH_ENDS = (BYTES_SPENT, "Batch Completed")


class Puller:
    """Reads a durable pull consumer as a stream of batches, with no added latency.

    One pull request is kept open at a time, for at most the ``limit`` the caller gave when
    it was sent; its messages are handed out as they arrive (nats-py's ``fetch`` of a batch
    waits for the whole batch or its timeout). Status replies (request expired, consumer
    changed) end a request; a request that hears nothing for ``expires`` plus a grace period
    (lost in a reconnect) is replaced. A request refused at once (the consumer is missing,
    deleted, or the server is electing a leader) pauses the puller for ``PAUSE`` seconds
    rather than asking again in a tight loop.

    ``timed``: each request gets a subscription of its own, so that ``requested_at`` can
    say when the request that delivered a message was sent (a delivered message carries
    only its original subject). A runner's lease on a job runs from then: a job delivered
    before the runner stalled is not taken for a fresh one after it.
    """

    EXPIRES = 5.0
    # The most one request may deliver, in bytes (at least twice the server's largest
    # message: a request must be able to take any one message); 0: no limit. Without one,
    # 64 events of 1.5 MB asked for at once went out together and overfilled the server's
    # buffer for a busy client (64 MiB), which then cut the dispatcher off as a slow
    # consumer; its calls in flight waited out their timeouts. Off for now: with 16 MiB,
    # the compose stack's check that every accepted event completes while a NATS node and
    # a runner die failed (a job never run, everything slower), for a reason not found yet.
    MAX_BYTES = 0
    STALE = 60.0  # seconds after its expiry a superseded request's subscription is dropped
    PAUSE = 1.0  # seconds without a request after one was refused
    SAY_EVERY = 60.0  # seconds between two warnings of refused requests

    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        expires: float = EXPIRES,
        timed: bool = False,
        arrived: asyncio.Event | None = None,
    ) -> None:
        self.nc, self.expires, self.timed = nc, expires, timed
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._prefix = nc.new_inbox()
        self._n = 0
        self._reply = ""  # the open request's reply subject ("" when none is open)
        self._left = 0  # messages the open request may still deliver
        self._asked = 0  # messages the open (or last) request asked for
        self.came_empty = False  # the last request ended delivering nothing
        # Messages the consumer still held after the last one delivered (0 once a request
        # expired with room left: none was waiting then).
        self.pending = 0
        self._deadline = 0.0
        self._paused_until = 0.0
        self._said = -self.SAY_EVERY
        self._consumer = consumer
        self._ready: list[Msg] = []
        self._arrived = arrived or asyncio.Event()
        self._sub: Any = None
        # timed: each request's subscription id -> (its reply subject, when it was sent, it)
        self._requests: dict[int, tuple[str, float, Any]] = {}
        self._times: dict[str, float] = {}  # a delivered message's ack subject -> that time
        self._unbounded = False  # the next request asks without a byte limit (see _on_msg)

    @classmethod
    async def bind(
        cls, nc: Client, consumer: str, expires: float = EXPIRES, timed: bool = False
    ) -> Puller:
        """A puller on one of the durable consumers of ``CONSUMERS``; its requests last
        ``expires`` seconds at most."""
        stream, _ = CONSUMERS[consumer]
        return await cls.of(nc, stream, consumer, expires, timed)

    @classmethod
    async def of(
        cls,
        nc: Client,
        stream: str,
        consumer: str,
        expires: float = EXPIRES,
        timed: bool = False,
        arrived: asyncio.Event | None = None,
    ) -> Puller:
        """A puller on any durable pull consumer; ``arrived`` (shared by several pullers,
        see ``ask``) is set whenever a message arrives or a request ends."""
        puller = cls(nc, stream, consumer, expires, timed, arrived)
        if not timed:
            puller._sub = await nc.subscribe(puller._prefix + ".*", cb=puller._on_msg)
        return puller

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.reply:  # a status, not a message (those carry their ack subject)
            headers = msg.headers or {}
            status = headers.get("Status", "")
            if status != "100":  # 408 expired, 409, 404...: that request is over
                await self._ended(msg.subject, msg.sid)
                if msg.subject == self._reply:
                    self.came_empty = self._left == self._asked
                    description = headers.get("Description", "")
                    if status == "408":
                        self.pending = 0  # it waited with room left: nothing came
                    elif status == "409" and description in BATCH_ENDS:
                        # It delivered its bytes' worth (or its batch, said so since it
                        # had a byte limit): the next request takes the rest. (One that
                        # delivered nothing met a message over the limit, from a server
                        # whose messages may be larger than it said.)
                        self._unbounded = self.came_empty and description == BYTES_SPENT
                    else:
                        self._refused(status, description)
                    self._reply, self._left = "", 0
                    self._arrived.set()
            return
        current = True  # delivered by the open request (untimed: taken to be)
        if self.timed:
            request = self._requests.get(msg.sid or 0)
            loop = asyncio.get_running_loop()
            self._times[msg.reply] = request[1] if request else loop.time()
            current = request is not None and request[0] == self._reply
        self._ready.append(msg)
        try:
            self.pending = msg.metadata.num_pending or 0
        except Exception:  # not a JetStream ack subject: its consumer tells nothing
            pass
        if self._left > 0 and current:  # (timed: a superseded request's does not count)
            self._left -= 1
            if self._left == 0:
                await self._ended(self._reply, msg.sid)
                self._reply = ""
        self._arrived.set()

    def _refused(self, status: str, description: str) -> None:
        loop = asyncio.get_running_loop()
        self._paused_until = loop.time() + self.PAUSE
        if loop.time() - self._said >= self.SAY_EVERY:
            self._said = loop.time()
            log.warning(
                "consumer %s refused a pull request (%s %s); asking again every %ss",
                self._consumer,
                status,
                description,
                self.PAUSE,
            )

    async def _ended(self, reply: str, sid: int | None) -> None:
        """A timed request that will deliver nothing more: its subscription goes."""
        request = self._requests.pop(sid or 0, None)
        if request is not None and request[0] == reply:
            await request[2].unsubscribe()
        elif request is not None:
            self._requests[sid or 0] = request

    async def _request(self, limit: int, expires: float | None = None) -> None:
        self._n += 1
        self._reply = f"{self._prefix}.{self._n}"
        self._left = self._asked = limit
        self.came_empty = False
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.timed:
            sub = await self.nc.subscribe(self._reply, cb=self._on_msg)
            self._requests[sub._id] = (self._reply, now, sub)
            for sid, (_, sent, old) in list(self._requests.items()):
                if sent + self.expires + self.STALE < now:  # what it delivers now is stale
                    del self._requests[sid]
                    await old.unsubscribe()
        expires = min(expires or self.expires, self.expires)
        self._deadline = now + expires + 2.0
        max_bytes = 0
        if self.MAX_BYTES and not self._unbounded:
            max_bytes = max(self.MAX_BYTES, 2 * self.nc.max_payload)
        self._unbounded = False
        body = json.dumps(
            {"batch": limit, "expires": int(expires * 1e9)}
            | ({"max_bytes": max_bytes} if max_bytes else {}),
            separators=(",", ":"),
        ).encode()
        await self.nc.publish(self._next_subject, body, reply=self._reply)

    async def take(self, limit: int, timeout: float = 1.0) -> list[Msg]:
        """Up to ``limit`` messages, as soon as there is one; [] after ``timeout`` without."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self._ready:
            now = loop.time()
            if self._reply and now > self._deadline:
                self._reply = ""  # lost (a reconnect): ask again
            if not self._reply and limit > 0:
                if now < self._paused_until or not self.nc.is_connected:
                    # The last request was refused, or NATS is away (a request sent now
                    # would go out after the reconnect with an old time on it).
                    until = self._paused_until if self.nc.is_connected else now + 0.5
                    await asyncio.sleep(max(0.0, min(until, end) - now))
                    if loop.time() >= end:
                        return []
                    continue
                try:
                    await self._request(limit)
                except Exception as e:  # disconnected: retry after a pause
                    log.warning("pull request failed: %s", e)
                    await asyncio.sleep(0.5)
                    return []
            self._arrived.clear()
            if self._ready:  # arrived while the request was being sent
                break
            wait = min(end, self._deadline) - now
            if wait <= 0 and now >= end:
                return []
            try:
                await asyncio.wait_for(self._arrived.wait(), max(wait, 0.0))
            except TimeoutError:
                if loop.time() >= end:
                    return []
        batch, self._ready = self._ready[:limit], self._ready[limit:]
        return batch

    async def ask(self, limit: int, expires: float | None = None) -> None:
        """Without waiting: asks for up to ``limit`` messages unless a request is open;
        they come to ``take_ready`` (and set ``arrived``). ``expires``: this request's, if
        shorter than the puller's."""
        now = asyncio.get_running_loop().time()
        if self._reply and now > self._deadline:
            self._reply, self._left = "", 0  # lost (a reconnect): ask again
        # (Not while NATS is away: the client would send the request after the reconnect,
        # and what it delivered would look older than it is.)
        if not self._reply and limit > 0 and now >= self._paused_until and self.nc.is_connected:
            await self._request(limit, expires)

    def take_ready(self) -> list[Msg]:
        """The messages delivered and not taken yet (without waiting)."""
        batch, self._ready = self._ready, []
        return batch

    @property
    def asking(self) -> bool:
        """A request is open (``held`` counts what it may still deliver)."""
        return bool(self._reply) and asyncio.get_running_loop().time() <= self._deadline

    @property
    def held(self) -> int:
        """Messages delivered and not taken yet, and those the open request may deliver."""
        return len(self._ready) + (self._left if self.asking else 0)

    def requested_at(self, msg: Msg) -> float:
        """(``timed``, once per message) The loop time when the request that delivered
        ``msg`` was sent: JetStream delivered it after that, so its ack deadline runs from
        later than that."""
        return self._times.pop(msg.reply, asyncio.get_running_loop().time())

    @property
    def ready(self) -> int:
        """Messages delivered and not taken yet."""
        return len(self._ready)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for _, _, sub in self._requests.values():
            await sub.unsubscribe()
        self._requests.clear()


async def flush(nc: Client, timeout: int = 10) -> None:
    """Returns once the server has everything ``nc`` sent before the call, subscriptions
    included: after it, another connection's publish reaches a subscription just made.
    nats-py's ``Client.flush`` alone does not promise that: it writes its PING straight to
    the socket, ahead of commands still in the client's buffer (a SUB made a moment ago),
    so its PONG may come back before the server has read them. Its round trip lets the
    buffer out; a second PING, written after it, is answered only once the server has
    read what came before. Raises as ``Client.flush`` does (``nats.errors.TimeoutError``
    when no answer comes within ``timeout``)."""
    for _ in range(2):
        await nc.flush(timeout=timeout)


async def close(nc: Client) -> None:
    """Flushes what was published and closes (drain would wait on open pull requests)."""
    try:
        await nc.flush(timeout=2)
    except Exception as e:
        log.debug("flush on close: %s", e)
    await nc.close()
