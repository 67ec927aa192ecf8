"""Store service: answers ``ak.store.>`` requests, materializes the journal and events, and
keeps storage bounded (``cleanup``). Its SQL runs on threads of its own."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from akcore import bus, keycheck, ops, service, subjects, timefmt, tracing, waitfor, wire
from akcore import requests as rq
from akcore.config import ENV_DB_DSN, Settings
from akcore.datakey import Keyring
from akcore.errors import AKError, NotFound, Unavailable
from akcore.retention import Retention
from akcore.secrets import ENV_LOST, Sealer, load_keys
from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from . import dbfaults, keycanary
from .api import StoreApi
from .cleanup import Purger, prune
from .db import open_engine
from .materialize import apply_events, apply_records, apply_spans, end_unkept
from .room import Room, tell

log = logging.getLogger(__name__)
T = TypeVar("T")


# Messages a store applies in one transaction.
BATCH = 256
# Seconds a store lets messages gather after a transaction before the next one.
LINGER = 0.01
# Seconds between two log lines about spans the database did not take.
SPANS_DROPPED_EVERY = 60.0


Sql = Callable[..., Awaitable[Any]]


def sql_thread(
    engine: Engine, threads: int = 0, name: str = "sql"
) -> tuple[Sql, ThreadPoolExecutor]:
    """Runs the store's SQL off the event loop (which keeps NATS answered meanwhile): one
    thread on SQLite (one writer at a time anyway), a few on PostgreSQL; ``threads`` if
    given."""
    threads = threads or (1 if engine.dialect.name == "sqlite" else 4)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def sql(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    return sql, pool


async def consume(
    nc: Client,
    durable: str,
    cls: type[T],
    apply: Callable[[Connection, list[T]], None],
    engine: Engine,
    stop: asyncio.Event,
    sql: Sql,
    applied: Callable[[list[tuple[Msg, T]]], None] | None = None,
    set_aside: Callable[[T, str], Awaitable[None]] | None = None,
) -> None:
    """Pulls a stream and applies what has arrived in one transaction per batch, in stream
    order. A message that cannot be decoded is dropped; a batch that fails is applied again
    one message at a time, so that one bad message is retried alone; one that still fails
    by its own doing (``dbfaults.message_at_fault``) after a few deliveries while the
    database answers is set aside (terminated, and ``set_aside`` told why): it must not
    stop the rest. A batch the database refuses for a reason of its own (away, read-only,
    full) is handed back whole, and the consumer pauses: every message would fail alike,
    and none may be set aside for it. One failing for no known reason while the database
    answers is tried message by message, the others applied; such a message is set aside
    only once it has failed ``MAX_UNKNOWN_ATTEMPTS`` times while others went through
    (``Progress``): one failing for ever would never end its session. ``applied`` hears of
    each batch once it is committed."""
    puller = await bus.Puller.bind(nc, durable)
    loop = asyncio.get_running_loop()
    last = 0.0
    outage = Outage(durable)
    progress = Progress()
    try:
        while not stop.is_set():
            msgs = await puller.take(BATCH)
            # A transaction per message costs far more than one per batch: when messages
            # trickle in (a session's activities, one every millisecond), let them gather
            # for a few milliseconds after the last transaction.
            pause = last + LINGER - loop.time()
            if msgs and len(msgs) < BATCH and pause > 0:
                await asyncio.sleep(pause)
                msgs += await puller.take(BATCH - len(msgs), timeout=0)
            last = loop.time()
            batch: list[tuple[Msg, T]] = []
            for msg in msgs:
                item = await bus.decode_or_drop(cls, msg, durable)
                if item is not None:
                    batch.append((msg, item))
            if not batch:
                continue
            try:
                await sql(_in_transaction, engine, apply, [x for _, x in batch])
            except Exception as e:
                if await _database_refuses(e, engine, sql):
                    await _wait_out(outage.failed(e), batch, stop)
                    continue
                # (each failed alone last time, for no known reason: said then)
                quiet = bool(outage.since) and not dbfaults.message_at_fault(e)
                if not quiet:
                    log.warning(
                        "%s: batch of %d failed (%s); one at a time", durable, len(batch), e
                    )
                done = []
                for msg, item in batch:
                    if await _apply_one(
                        msg, item, apply, engine, durable, sql, set_aside, quiet, progress
                    ):
                        done.append((msg, item))
                if applied is not None:
                    applied(done)
                if done:
                    outage.over()
                elif not dbfaults.message_at_fault(e):
                    # Each failed alone for no known reason (a schema older than the code):
                    # none was set aside; waited out as the database's faults are.
                    await waitfor.pause(stop, outage.failed(e))
                continue
            outage.over()
            for msg, _ in batch:
                await msg.ack()
            progress.went_through(len(batch))
            if applied is not None:
                applied(batch)
    finally:
        await puller.close()


async def _database_refuses(e: BaseException, engine: Engine, sql: Sql) -> bool:
    """Whether a batch that failed with ``e`` failed for the database's doing: it is away
    or refusing (``dbfaults.database_away``), or does not answer. An error of no known kind
    while it answers (a bug of the store's on one record) is tried message by message:
    taken as the database's, the whole batch went back each time, the other sessions'
    records with it, for as long as the one kept failing."""
    if dbfaults.message_at_fault(e):
        return False
    return dbfaults.database_away(e) or not await _database_answers(engine, sql)


async def _wait_out(pause: float, batch: list[tuple[Msg, Any]], stop: asyncio.Event) -> None:
    """Hands ``batch`` back to be delivered after ``pause`` seconds, and pauses as long."""
    for msg, _ in batch:
        await msg.nak(delay=pause)
    await waitfor.pause(stop, pause)


def _in_transaction(
    engine: Engine, apply: Callable[[Connection, list[T]], None], items: list[T]
) -> None:
    with engine.begin() as conn:
        apply(conn, items)


# Deliveries of a message that fails to apply on its own before it is set aside.
MAX_APPLY_ATTEMPTS = 5
# Deliveries of a message failing for no known reason (not surely its own doing, nor the
# database's) before it is set aside, if others went through meanwhile: ~3 minutes of
# retries (each delayed a second more than the last).
MAX_UNKNOWN_ATTEMPTS = 20


class Progress:
    """What a consumer applied, to tell a message failing alone (a bug of the store's on
    it: the database takes the others) from one failing as every message does (a schema
    older than the code: none may be set aside for it)."""

    KEPT = 10_000  # messages failing at once that are remembered (the oldest forgotten)

    def __init__(self) -> None:
        self.count = 0  # messages applied so far
        self._failed: dict[tuple[str, int], int] = {}  # a failing message: ``count`` then

    def went_through(self, n: int = 1) -> None:
        self.count += n

    def others_since_first_failure(self, msg: Msg) -> bool:
        """Whether other messages were applied since ``msg`` first failed (remembered now,
        if it was not)."""
        key = self._key(msg)
        if key not in self._failed:
            if len(self._failed) >= self.KEPT:
                del self._failed[next(iter(self._failed))]
            self._failed[key] = self.count
        return self.count > self._failed[key]

    def forget(self, msg: Msg) -> None:
        self._failed.pop(self._key(msg), None)

    @staticmethod
    def _key(msg: Msg) -> tuple[str, int]:
        return msg.subject, zlib.crc32(msg.data)


async def _apply_one(
    msg: Msg,
    item: T,
    apply: Callable[[Connection, list[T]], None],
    engine: Engine,
    durable: str,
    sql: Sql,
    set_aside: Callable[[T, str], Awaitable[None]] | None,
    quiet: bool,
    progress: Progress,
) -> bool:
    """Applies one message alone; sets it aside when it keeps failing by its own doing, or
    for no known reason while others go through (``progress``). ``quiet``: a failure to
    retry is not logged (each failed alone the time before)."""
    try:
        await sql(_in_transaction, engine, apply, [item])
    except Exception as e:
        attempts = msg.metadata.num_delivered or 1
        alone = not dbfaults.database_away(e) and progress.others_since_first_failure(msg)
        if (
            (attempts >= MAX_APPLY_ATTEMPTS and dbfaults.message_at_fault(e))
            or (attempts >= MAX_UNKNOWN_ATTEMPTS and alone)
        ) and await _database_answers(engine, sql):
            progress.forget(msg)
            log.exception(
                "%s: %s could not be applied in %d attempts; set aside",
                durable,
                msg.subject,
                attempts,
            )
            await msg.term()
            if set_aside is not None:
                await set_aside(item, f"{type(e).__name__}: {e}"[:500])
            return False
        if not quiet:
            log.warning("%s: applying %s failed, will retry: %r", durable, msg.subject, e)
        await msg.nak(delay=float(attempts))
        return False
    await msg.ack()
    progress.forget(msg)
    progress.went_through()
    return True


# Seconds a consumer pauses after the database refused a batch: the first time, and at most.
OUTAGE_PAUSE = 0.5
OUTAGE_PAUSE_MAX = 5.0


class Outage:
    """A consumer's view of the database refusing its batches: said once as it begins and
    once as it ends (not once per message: that was thousands of lines a second), and how
    long to pause before the next try (doubling, up to ``OUTAGE_PAUSE_MAX``)."""

    def __init__(self, durable: str) -> None:
        self.durable = durable
        self.since = 0.0  # when the database began refusing (monotonic); 0: it takes them
        self.pause = 0.0

    def failed(self, e: BaseException) -> float:
        """Seconds to pause after a batch the database refused with ``e``."""
        if not self.since:
            self.since, self.pause = time.monotonic(), OUTAGE_PAUSE
            log.warning(
                "%s: the database refuses what the store writes (%s); the messages wait in "
                "JetStream and are applied once it takes them again",
                self.durable,
                dbfaults.reason(e),
            )
        else:
            self.pause = min(self.pause * 2, OUTAGE_PAUSE_MAX)
        return self.pause

    def over(self) -> None:
        if self.since:
            log.info(
                "%s: the database takes what the store writes again (after %.0f s)",
                self.durable,
                time.monotonic() - self.since,
            )
            self.since = 0.0


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def _database_answers(engine: Engine, sql: Sql) -> bool:
    """Whether the database works (then a message it keeps refusing is the message's fault)."""
    try:
        await sql(_select_one, engine)
    except Exception:
        return False
    return True


# Reads on the path of every webhook, event and session, each indexed and bounded: served
# on a thread of their own (``serve_ops``' ``hot``), so that an API read (a page of
# sessions, an export) or a batch of journal records being applied holds no other
# project's webhook or session start behind it. (SQLite in WAL mode reads beside its
# writer.)
HOT_OPS = frozenset(
    {
        "webhook.lookup",
        "dispatch.targets",
        "session.env",
        "build.get",
        "session.states",
        "project.active",
        "token.check",
    }
)


class Rooms:
    """``bus.serve_requests``' rooms of the store. ``HOT_OPS``, reads, are answered 64 at a
    time (on their own thread, ``serve_ops``); the other operations one at a time, in the
    order they came, as ever: some check and then write in two steps, and rely on it. Up to
    256 of those wait for their turn beside the hot ones; beyond that, every request waits
    in the subscription."""

    def __init__(self) -> None:
        self.hot = bus.Room(at_once=64, waiting=0)
        self.others = bus.Room(at_once=1, waiting=256)

    def __call__(self, op: str) -> bus.Room:
        return self.hot if op in HOT_OPS else self.others


def serve_ops(
    api: StoreApi, nc: Client, sql: Sql, hot: Sql | None = None
) -> Callable[[str, dict[str, Any]], Awaitable[Any]]:
    """Answers the store's operations of ``akcore.ops``: each request parsed into its typed
    request once, here; an operation that changes what caches keep is announced on
    ``ak.changed`` before it is answered, so caches forget before the caller goes on. Most
    are the database's (``api.routes``, on its thread); a few are JetStream's (here). The
    database away or refusing is "unavailable", as the store away is: a runner's system
    call or an attempt's start waits for it rather than ending its session. ``hot``: where
    ``HOT_OPS`` run (beside ``sql``)."""
    routes = api.routes()
    js = nc.jetstream()

    async def deferred_consumer(req: rq.DeferredConsumer) -> dict[str, bool]:
        return await bus.make_deferred_consumer(js, req.destination_id)

    async def keys_check(req: rq.KeysCheck) -> dict[str, Any]:
        return api.keys_check(req)  # no database: not behind its queue

    streams: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "deferred.consumer": deferred_consumer,
        "keys.check": keys_check,
    }
    declared = ops.served_by(ops.Service.STORE)
    if set(routes) | set(streams) != set(declared):
        missing = (set(routes) | set(streams)) ^ set(declared)
        raise RuntimeError(f"store routes differ from akcore.ops: {missing}")

    async def handle(name: str, args: dict[str, Any]) -> Any:
        op = declared.get(name)
        if op is None:
            raise NotFound(f"unknown store operation {name!r}")
        if name in streams:
            result = await streams[name](op.parse(args))
        else:
            try:
                on = hot if hot is not None and name in HOT_OPS else sql
                result = await on(routes[name], op.parse(args))
            except Exception as e:
                if not dbfaults.database_away(e):
                    raise
                log.warning("request %s: the database refused it: %s", name, dbfaults.reason(e))
                raise Unavailable(
                    f"{name} failed: the store's database is away or refusing it for now (the "
                    "store's log says why): try again once it is back"
                ) from None
        if not isinstance(result, op.reply):  # the store's bug, not the caller's
            raise AKError(f"{name} answered a {type(result).__name__}, not {op.reply.__name__}")
        if op.invalidates:
            await nc.publish(subjects.CHANGED, name.encode())
        return result

    return handle


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    try:
        engine = open_engine(settings.db_dsn)
    except OperationalError as e:  # away, or refusing us: said in a line, tried again
        raise Unavailable(f"cannot open the database ({ENV_DB_DSN}): {e.orig or e}") from None
    sql, pool = sql_thread(engine)
    hot, hot_pool = sql_thread(engine, threads=1, name="sql-hot")
    keys = load_keys()
    api = StoreApi(engine, Sealer(*keys), Keyring(keys))
    await sql(api.tokens.bootstrap, settings.auth_bootstrap_file)
    nc = await bus.connect_service(settings, "store")
    serve = serve_ops(api, nc, sql, hot)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    lost = keycheck.lost_ids(os.environ.get(ENV_LOST, ""))
    try:  # (both canaries judged before either is written: ak_store.keycanary)
        canaries = [
            (keycanary.read(engine), keycanary.ALTERED),
            (await keycheck.read(js), keycheck.ALTERED_KV),
        ]
        await keycheck.admit(nc, api.keys, canaries, lost)
        await keycheck.settle(nc, api.keys, lost)
        await keycanary.settle(engine, api.keys, lost)
    except BaseException:  # (a mismatch, NATS away: nothing left open)
        await bus.close(nc)
        pool.shutdown(wait=True)
        hot_pool.shutdown(wait=True)
        engine.dispose()
        raise
    tel = tracing.Telemetry("store")
    tel.send_to_store(nc)

    spans_dropped = [0.0]  # when the last drop was said (monotonic)

    async def on_spans(msg: Msg) -> None:
        try:
            await sql(apply_spans, engine, wire.unpack(msg.data))
        except Exception as e:  # spans are diagnostics: never let them hurt the store
            # (said once a minute: with the database away every span of every session
            # fails, and each failure was a line and its statement)
            now = time.monotonic()
            if now - spans_dropped[0] >= SPANS_DROPPED_EVERY:
                spans_dropped[0] = now
                log.warning("dropping spans (and more for a minute): %s", dbfaults.reason(e))

    purger = Purger(js, engine, sql)

    async def record_set_aside(rec: wire.JournalRecord, error: str) -> None:
        """A session must not go on without its history: it ends in ERROR. One whose end is
        the record set aside has ended already: SQL is told here, as nothing else would."""
        if rec.kind == wire.ENDED:
            reason = (
                f"error: the store could not keep this session's end ({error}); it ended, "
                "but how is not known here: `ak session log` shows its last records"
            )
            try:
                await sql(end_unkept, engine, rec.session_id, reason, timefmt.now_us(), api.keys)
            except Exception as e:  # (the log has said it was set aside)
                log.warning("session %s: its end not kept either: %r", rec.session_id, e)
            return
        reason = (
            f"error: the store could not keep record {rec.seq} ({rec.kind}) of this session "
            f"({error}); the session was ended so that it does not go on without it"
        )
        stop = wire.InboxMessage(kind=wire.INBOX_STOP, reason=reason, failed=True)
        await tell(nc, rec.session_id, stop)

    def records_applied(batch: list[tuple[Msg, wire.JournalRecord]]) -> None:
        for msg, rec in batch:
            if rec.kind == wire.ENDED:
                inbox = bool(rec.data.get("inbox", True))  # (older runners did not say)
                purger.ended(rec.session_id, msg.metadata.sequence.stream, inbox)

    await bus.serve_requests(
        nc, subjects.STORE_ALL, serve, queue="store", telemetry=tel, rooms=Rooms()
    )
    await nc.subscribe(subjects.SPANS, queue="store", cb=on_spans)
    await bus.serve_health(nc, "store")
    journal = consume(
        nc,
        subjects.CONSUMER_STORE_JOURNAL,
        wire.JournalRecord,
        functools.partial(apply_records, keys=api.keys),
        engine,
        stop,
        sql,
        records_applied,
        record_set_aside,
    )
    events = consume(
        nc,
        subjects.CONSUMER_STORE_EVENTS,
        wire.Event,
        functools.partial(apply_events, keys=api.keys),
        engine,
        stop,
        sql,
    )
    tasks = [
        asyncio.create_task(journal),
        asyncio.create_task(events),
        asyncio.create_task(purger.run(stop)),
        asyncio.create_task(Room(nc, engine, sql, api.keys, serve).run(stop)),
        asyncio.create_task(_prune(engine, sql, stop)),
    ]
    service.settle_heap()
    log.info("store ready (db %s)", engine.url.render_as_string(hide_password=True))
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await tel.close()
    await bus.close(nc)
    pool.shutdown(wait=True)
    hot_pool.shutdown(wait=True)
    engine.dispose()


# Seconds between two prunings of SQL by the retention settings (the first soon after start).
PRUNE_EVERY = 300.0


async def _prune(engine: Engine, sql: Sql, stop: asyncio.Event) -> None:
    keep = Retention.from_env()
    wait = 30.0
    while not await waitfor.pause(stop, wait):
        wait = PRUNE_EVERY
        try:
            done = await sql(prune, engine, keep)
        except Exception as e:
            log.warning("pruning by the retention settings failed: %r", e)
            continue
        if any(done.values()):
            log.info("pruned by the retention settings: %s", done)
