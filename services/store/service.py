"""Store service: answers ``ak.store.>`` requests and materializes the journal and events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from akcore import bus, subjects, tracing, wire
from akcore.config import Settings
from akcore.secrets import Sealer, load_key
from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy import Engine
from sqlmodel import Session as DB

from .api import StoreApi
from .db import open_engine
from .materialize import apply_event, apply_record, apply_spans

log = logging.getLogger(__name__)


# Messages a store applies in one transaction.
BATCH = 256


async def consume(
    nc: Client,
    durable: str,
    apply: Callable[[DB, bytes], None],
    engine: Engine,
    stop: asyncio.Event,
) -> None:
    """Pulls a stream and applies what has arrived in one transaction per batch, in stream
    order, off the event loop (requests are answered meanwhile). A batch that fails is
    applied again one message at a time, so that one bad message is skipped alone."""
    puller = await bus.Puller.bind(nc, durable)
    try:
        while not stop.is_set():
            batch = await puller.take(BATCH)
            if not batch:
                continue
            try:
                await asyncio.to_thread(_apply_all, engine, apply, [m.data for m in batch])
            except Exception as e:
                log.warning("%s: batch of %d failed (%s); one at a time", durable, len(batch), e)
                for msg in batch:
                    await _apply_one(msg, apply, engine, durable)
                continue
            for msg in batch:
                await msg.ack()
    finally:
        await puller.close()


def _apply_all(engine: Engine, apply: Callable[[DB, bytes], None], items: list[bytes]) -> None:
    with DB(engine) as db:
        for data in items:
            apply(db, data)
        db.commit()


async def _apply_one(
    msg: Msg, apply: Callable[[DB, bytes], None], engine: Engine, durable: str
) -> None:
    try:
        await asyncio.to_thread(_apply_all, engine, apply, [msg.data])
    except (ValueError, TypeError, KeyError) as e:  # undecodable: never retry
        log.error("%s: dropping malformed message %s: %s", durable, msg.subject, e)
        await msg.term()
        return
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
        return api.handler(op)(args)

    async def on_spans(msg: Msg) -> None:
        try:
            apply_spans(engine, wire.unpack(msg.data))
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
                lambda db, b: apply_record(db, wire.decode(wire.JournalRecord, b)),
                engine,
                stop,
            )
        ),
        asyncio.create_task(
            consume(
                nc,
                subjects.CONSUMER_STORE_EVENTS,
                lambda db, b: apply_event(db, wire.decode(wire.Event, b)),
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
