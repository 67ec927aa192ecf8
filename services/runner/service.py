"""Runner service: pulls jobs from ``AK_JOBS`` and runs each session while holding its job."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from akcore import bus, config, subjects, tracing, wire
from akcore.cache import StoreCache
from akcore.config import Settings
from akcore.errors import InvalidArgument, NotFound, Unavailable
from akcore.journal import ReplayState, read_journal, replay_state
from nats.aio.msg import Msg

from .builds import worker_env
from .inbox import InboxWatch
from .pyenv import EnvError, PythonEnvs, is_ready, spec_for
from .session import Host, SessionRun
from .worker import WorkerPool

log = logging.getLogger(__name__)


async def _heartbeat(msg: Msg, every: float) -> None:
    """Keeps a live session's job un-acked but owned (in-progress) while it runs."""
    while True:
        await asyncio.sleep(every)
        try:
            await msg.in_progress()
        except Exception as e:
            log.warning("heartbeat failed: %s", e)


async def _reap(pool: WorkerPool, stop: asyncio.Event) -> None:
    """Stops worker processes that waited too long for their project's next session."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=pool.IDLE_SECONDS / 4)
        except TimeoutError:
            await pool.reap()


def request_handler(envs: PythonEnvs) -> Callable[[str, dict[str, Any]], Awaitable[Any]]:
    """The runner's API (``ak.runner.<op>``), called by ``ak deploy`` through ingress."""

    async def handle(op: str, args: dict[str, Any]) -> Any:
        if op != "pyenv.prepare":
            raise NotFound(f"unknown runner operation {op!r}")
        req = args.get("requirements")
        if req is not None and not isinstance(req, bytes):
            raise InvalidArgument("requirements must be the bytes of requirements.txt")
        return await envs.prepare(req, str(args.get("token", "")), int(args.get("offset", 0)))

    return handle


async def handle_job(host: Host, msg: Msg, heartbeat: float) -> None:
    job = await bus.decode_or_drop(wire.Job, msg, "job")
    if job is None:
        return
    attempt = msg.metadata.num_delivered or 1
    beat = asyncio.create_task(_heartbeat(msg, heartbeat))
    replay = ReplayState()
    if attempt > 1:  # redelivered: a runner died mid-session; replay what it journaled
        try:
            t0 = time.perf_counter()
            replay = replay_state(await read_journal(host.js, job.session_id))
            replay.read_us = int((time.perf_counter() - t0) * 1e6)
        except Exception:
            log.exception("session %s: cannot read its journal, will retry", job.session_id)
            beat.cancel()
            await msg.nak(delay=1.0)
            return
        if replay.ended:  # it finished; only the ack was lost
            beat.cancel()
            await msg.ack()
            return
        log.info(
            "session %s: attempt %d replays %d steps", job.session_id, attempt, len(replay.steps)
        )
    # The trace the session belongs to: from the job, else from its journal (a replay).
    headers = dict(msg.headers or {})
    if not headers.get(subjects.HDR_TRACEPARENT) and replay.traceparent:
        headers[subjects.HDR_TRACEPARENT] = replay.traceparent
    stamp = msg.metadata.timestamp
    run = SessionRun(host, job, attempt, replay, stamp.timestamp() if stamp else 0.0)
    try:
        await run.traced(tracing.extract(headers))
    except Unavailable as e:
        log.warning("session %s: %s; will retry", job.session_id, e)
        beat.cancel()
        await msg.nak(delay=1.0)
        return
    except Exception:
        log.exception("session %s: runner failure, job will be redelivered", job.session_id)
        beat.cancel()
        await msg.nak(delay=1.0)
        return
    beat.cancel()
    await msg.ack()  # only after the ended record is acknowledged


async def _warm(host: Host) -> None:
    """Starts spare workers for the default environment as the runner starts, so that the
    first sessions (a dead runner's, taken over) do not wait for Python to start. Only when
    that environment is ready: building it is left to the first session that needs it."""
    envs = host.envs
    if not envs.worker_python and not is_ready(spec_for(None)):
        return
    try:
        python, extra_env, _ = await envs.python_for(None)
        await host.pool.warm(python, host.spawn_env(extra_env))
    except (EnvError, OSError) as e:
        log.warning("no spare workers started ahead: %s", e)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    runner_id = f"{socket.gethostname()}-{os.getpid()}"
    cache = config.data_home() / "runner" / "builds"
    envs = PythonEnvs(settings.worker_python, config.data_home() / "runner" / "sdk")
    spare = config.data_home() / "runner" / "spare"
    spare.mkdir(parents=True, exist_ok=True)
    pool = WorkerPool(settings.warm_workers, spare, settings.worker_sessions, settings.fork_workers)
    nc = await bus.connect(settings.nats_url, "ak-runner")
    tel = tracing.Telemetry("runner")
    tel.send_to_store(nc)
    env_cache = StoreCache()
    await env_cache.watch(nc)
    inboxes = InboxWatch()
    await inboxes.watch(nc)
    js = nc.jetstream()
    base_env = worker_env(dict(os.environ), {}, config.INTERNAL_ENV_PREFIXES)
    host = Host(nc, cache, envs, pool, tel, runner_id, env_cache, inboxes, js, base_env)
    await bus.ensure_streams(js)
    await bus.serve_health(nc, "runner")
    await bus.serve_requests(nc, subjects.RUNNER_ALL, request_handler(envs), queue="runners")
    puller = await bus.Puller.bind(nc, subjects.CONSUMER_RUNNER)
    info = await js.consumer_info(subjects.STREAM_JOBS, subjects.CONSUMER_RUNNER)
    heartbeat = (info.config.ack_wait or bus.JOB_ACK_WAIT) / 3
    live: set[asyncio.Task[None]] = set()
    reaper = asyncio.create_task(_reap(pool, stop))
    warming = asyncio.create_task(_warm(host))
    log.info(
        "runner %s ready (up to %d sessions running and %d waiting)",
        runner_id,
        settings.runner_concurrency,
        settings.runner_max_waiting,
    )
    admission = host.admission
    while not stop.is_set():
        # Waiting sessions (sleeps, next_event) do not count against the sessions running.
        free = min(
            settings.runner_concurrency - (len(live) - admission.waiting),
            settings.runner_concurrency + settings.runner_max_waiting - len(live),
        )
        # Jobs already delivered start anyway: they hold no heartbeat while they wait here,
        # and there are no more of them than there was room when they were asked for
        # (less now only if waiting sessions woke up meanwhile).
        free = max(free, puller.ready)
        if free <= 0:
            admission.changed.clear()
            changed = asyncio.create_task(admission.changed.wait())
            await asyncio.wait({*live, changed}, return_when=asyncio.FIRST_COMPLETED, timeout=1.0)
            changed.cancel()
            continue
        for msg in await puller.take(free):
            task = asyncio.create_task(handle_job(host, msg, heartbeat))
            live.add(task)
            task.add_done_callback(live.discard)
    # Stopping: live sessions keep their jobs un-acked, so another runner takes them over.
    for task in live:
        task.cancel()
    warming.cancel()
    await asyncio.gather(*live, reaper, warming, return_exceptions=True)
    await puller.close()
    await pool.close()
    await tel.close()
    await bus.close(nc)
