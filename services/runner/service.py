"""Runner service: pulls jobs from ``AK_JOBS`` and runs each session while holding its job."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

from akcore import bus, config, subjects, wire
from akcore.config import Settings
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from .session import SessionRun

log = logging.getLogger(__name__)

HEARTBEAT = bus.JOB_ACK_WAIT / 3


async def _heartbeat(msg: Msg) -> None:
    """Keeps a live session's job un-acked but owned (in-progress) while it runs."""
    while True:
        await asyncio.sleep(HEARTBEAT)
        try:
            await msg.in_progress()
        except Exception as e:
            log.warning("heartbeat failed: %s", e)


async def _journal_tail(nc: Client, session_id: str) -> wire.JournalRecord | None:
    try:
        raw = await nc.jetstream().get_last_msg(
            subjects.STREAM_JOURNAL, subjects.journal_subject(session_id)
        )
    except NotFoundError:
        return None
    return wire.decode(wire.JournalRecord, raw.data or b"")


async def handle_job(nc: Client, settings: Settings, cache: Path, runner_id: str, msg: Msg) -> None:
    try:
        job = wire.decode(wire.Job, msg.data)
    except Exception as e:
        log.error("dropping malformed job %s: %s", msg.subject, e)
        await msg.term()
        return
    attempt = msg.metadata.num_delivered or 1
    next_seq = 1
    if attempt > 1:  # redelivered: another runner died or gave up; never start it twice
        tail = await _journal_tail(nc, job.session_id)
        if tail is not None and tail.kind == wire.ENDED:
            await msg.ack()
            return
        next_seq = tail.seq + 1 if tail else 1
    beat = asyncio.create_task(_heartbeat(msg))
    try:
        await SessionRun(nc, settings, cache, job, attempt, next_seq, runner_id).run()
    except Exception:
        log.exception("session %s: runner failure, job will be redelivered", job.session_id)
        beat.cancel()
        await msg.nak(delay=1.0)
        return
    beat.cancel()
    await msg.ack()  # only after the ended record is acknowledged


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    runner_id = f"{socket.gethostname()}-{os.getpid()}"
    cache = config.data_home() / "runner" / "builds"
    nc = await bus.connect(settings.nats_url, "ak-runner")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    await bus.serve_health(nc, "runner")
    sub = await bus.bind(js, subjects.CONSUMER_RUNNER)
    live: set[asyncio.Task[None]] = set()
    log.info("runner %s ready (up to %d sessions)", runner_id, settings.runner_concurrency)
    while not stop.is_set():
        free = settings.runner_concurrency - len(live)
        if free <= 0:
            await asyncio.wait(live, return_when=asyncio.FIRST_COMPLETED, timeout=1.0)
            continue
        for msg in await bus.pull(sub):
            task = asyncio.create_task(handle_job(nc, settings, cache, runner_id, msg))
            live.add(task)
            task.add_done_callback(live.discard)
    # Stopping: live sessions keep their jobs un-acked, so another runner takes them over.
    for task in live:
        task.cancel()
    await asyncio.gather(*live, return_exceptions=True)
    await bus.close(nc)
