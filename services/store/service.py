"""Store service: answers ``ak.store.>`` requests and materializes the journal and events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from akcore import bus, subjects, tracing, wire
from akcore.config import Settings
from akcore.secrets import Sealer, load_key
from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy import Connection, Engine

from .api import StoreApi
from .db import open_engine
from .materialize import apply_events, apply_records, apply_spans

log = logging.getLogger(__name__)
T = TypeVar("T")


# Operations after which other services' caches (akcore.cache) must forget what they kept
# (the dispatcher keeps each trigger's targets, subscriptions included).
CHANGING_OPS = frozenset(
    {
        "manifest.apply",
        "build.create",
        "deployment.create",
        "deployment.activate",
        "deployment.deactivate",
        "trigger.create",
        "trigger.delete",
        "subscription.create",
        "subscription.delete",
        "var.set",
        "var.delete",
    }
)

# Messages a store applies in one transaction.
BATCH = 256
# Seconds a store lets messages gather after a transaction before the next one.
LINGER = 0.01


async def consume(
    nc: Client,
    durable: str,
    cls: type[T],
    apply: Callable[[Connection, list[T]], None],
    engine: Engine,
    stop: asyncio.Event,
) -> None:
    """Pulls a stream and applies what has arrived in one transaction per batch, in stream
    order. A message that cannot be decoded is dropped; a batch that fails is applied again
    one message at a time, so that one bad message is retried alone.

    Transactions run on the event loop, like requests: a batch holds the loop for a few
    milliseconds, where handing it to a thread cost more CPU than the SQL itself (both
    threads run Python and take turns on the interpreter lock)."""
    puller = await bus.Puller.bind(nc, durable)
    loop = asyncio.get_running_loop()
    last = 0.0
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
                items = [x for _, x in batch]
                _in_transaction(engine, apply, items)
            except Exception as e:
                log.warning("%s: batch of %d failed (%s); one at a time", durable, len(batch), e)
                for msg, item in batch:
                    await _apply_one(msg, item, apply, engine, durable)
                continue
            for msg, _ in batch:
                await msg.ack()
    finally:
        await puller.close()


def _in_transaction(
    engine: Engine, apply: Callable[[Connection, list[T]], None], items: list[T]
) -> None:
    with engine.begin() as conn:
        apply(conn, items)


async def _apply_one(
    msg: Msg,
    item: T,
    apply: Callable[[Connection, list[T]], None],
    engine: Engine,
    durable: str,
) -> None:
    try:
        _in_transaction(engine, apply, [item])
    except Exception:
        log.exception("%s: applying %s failed, will retry", durable, msg.subject)
        await msg.nak(delay=1.0)
        return
    await msg.ack()


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    engine = open_engine(settings.db_dsn)
    api = StoreApi(engine, Sealer(load_key()))
    nc = await bus.connect(settings.nats_url, "ak-store")
    await bus.ensure_streams(nc.jetstream())
    tel = tracing.Telemetry("store")
    tel.send_to_store(nc)

    async def handle(op: str, args: dict[str, Any]) -> Any:
        result = api.handler(op)(args)
        if op in CHANGING_OPS:  # before the answer: caches forget before the caller goes on
            await nc.publish(subjects.CHANGED, op.encode())
        return result

    async def on_spans(msg: Msg) -> None:
        try:
            spans = wire.unpack(msg.data)
            apply_spans(engine, spans)
        except Exception as e:  # spans are diagnostics: never let them hurt the store
            log.warning("dropping %d bytes of spans: %s", len(msg.data), e)

    await bus.serve_requests(nc, subjects.STORE_ALL, handle, queue="store", telemetry=tel)
    await nc.subscribe(subjects.SPANS, queue="store", cb=on_spans)
    await bus.serve_health(nc, "store")
    tasks = [
        asyncio.create_task(
            consume(
                nc,
                subjects.CONSUMER_STORE_JOURNAL,
                wire.JournalRecord,
                apply_records,
                engine,
                stop,
            )
        ),
        asyncio.create_task(
            consume(
                nc,
                subjects.CONSUMER_STORE_EVENTS,
                wire.Event,
                apply_events,
                engine,
                stop,
            )
        ),
    ]
    log.info("store ready (db %s)", engine.url.render_as_string(hide_password=True))
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await tel.close()
    await bus.close(nc)
    engine.dispose()
