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

from .api import StoreApi
from .db import open_engine
from .materialize import apply_event, apply_record, apply_spans

log = logging.getLogger(__name__)


async def consume(
    nc: Client, durable: str, apply: Callable[[bytes], None], stop: asyncio.Event
) -> None:
    """Pulls a stream in order and applies each message; a bad message is logged and skipped."""
    sub = await bus.bind(nc.jetstream(), durable)
    while not stop.is_set():
        for msg in await bus.pull(sub):
            await _apply_one(msg, apply, durable)


async def _apply_one(msg: Msg, apply: Callable[[bytes], None], durable: str) -> None:
    try:
        apply(msg.data)
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
                lambda b: apply_record(engine, wire.decode(wire.JournalRecord, b)),
                stop,
            )
        ),
        asyncio.create_task(
            consume(
                nc,
                subjects.CONSUMER_STORE_EVENTS,
                lambda b: apply_event(engine, wire.decode(wire.Event, b)),
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
