"""Runner service: pulls jobs from ``AK_JOBS`` and runs each session while holding its job."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from akcore import (
    bus,
    config,
    journal,
    keycheck,
    netfence,
    ops,
    sdkdist,
    service,
    subjects,
    tracing,
    waitfor,
    wire,
)
from akcore import requests as rq
from akcore.cache import StoreCache
from akcore.cgroups import WorkerGroups
from akcore.chunks import Chunker
from akcore.config import Settings, worker_env
from akcore.datakey import Keyring
from akcore.errors import AKError, NotFound
from akcore.journalio import JournalWriter, Limits, last_seq, read_journal
from akcore.ops import Cache
from akcore.secrets import load_keyring
from nats.aio.client import Client
from nats.aio.msg import Msg

from . import commands
from .builds import BuildCache
from .faults import Faults
from .inbox import InboxWatch
from .lanes import Lanes
from .lease import Lease
from .parking import Parking
from .pyenv import EnvError, PythonEnvs, VenvCache, is_ready, spec_for
from .sandbox import (
    MemoryWatch,
    UserIds,
    WorkerLimits,
    is_root,
    lock_dir,
    seal_data_home,
    temp_dirs,
)
from .session import Host, Outcome, SessionRun, after_end, parked_entry
from .worker import WorkerPool

log = logging.getLogger(__name__)

PRUNE_EVERY = 300.0  # seconds between looks for unpacked builds to remove


async def _reap(pool: WorkerPool, stop: asyncio.Event) -> None:
    """Stops worker processes that waited too long for their project's next session."""
    while not await waitfor.pause(stop, pool.IDLE_SECONDS / 4):
        await pool.reap()


async def _prune(host: Host, stop: asyncio.Event) -> None:
    """Removes unpacked builds and project environments no session needs: at start, then
    every few minutes, or twice per AK_RUNNER__BUILD_CACHE_IDLE (or AK_RUNNER__VENVS_IDLE)
    when that is shorter (and ``Host`` after each build it unpacks, ``PythonEnvs`` after
    each environment it builds)."""
    venvs = host.envs.venvs
    idles = [t for t in (host.cache.idle, venvs.idle if venvs else 0) if t > 0]
    every = min([PRUNE_EVERY, *(t / 2 for t in idles)])
    while not stop.is_set():
        await host.prune()
        await host.envs.prune()
        await waitfor.pause(stop, every)


def request_handler(
    envs: PythonEnvs, nc: Client, keys: Keyring
) -> Callable[[str, dict[str, Any]], Awaitable[Any]]:
    """The runner's API (``ak.runner.<op>``), called through ingress: ``ak deploy``'s
    environment builds, and starting, stopping and restarting sessions by hand."""

    declared = ops.served_by(ops.Service.RUNNER)
    assert set(declared) == {"pyenv.prepare", *commands.COMMANDS}, "runner ops differ from ops"

    async def handle(name: str, args: dict[str, Any]) -> Any:
        op = declared.get(name)
        if op is None:
            raise NotFound(f"unknown runner operation {name!r}")
        req = op.parse(args)
        if isinstance(req, rq.PyenvPrepare):
            return await envs.prepare(
                req.requirements, req.token, req.offset, frozenset(req.within)
            )
        return await commands.COMMANDS[name](nc, keys, req)  # type: ignore[operator]

    return handle


async def handle_job(host: Host, msg: Msg, ack_wait: float, since: float, limit: int) -> None:
    """One delivery of a job: an attempt at its session, or nothing when the job is stale.

    ``since``: when the pull request that delivered it was sent (the lease runs from then);
    ``limit``: deliveries after which the session ends in ERROR instead of running again.
    The job is acked once the journal has the session's end, naked after a failure that
    may pass, and left alone when the attempt no longer owns it (another runner does)."""
    job = await bus.decode_or_drop(wire.Job, msg, "job")
    if job is None:
        return
    lease = Lease(msg, ack_wait, since, job.session_id)
    if not lease.valid():
        log.warning(
            "session %s: its job arrived after the runner stalled; left to the next runner",
            job.session_id,
        )
        return
    beat = asyncio.create_task(lease.keep())
    try:
        outcome = await _attempt(host, msg, job, lease, limit)
    except Exception as e:  # a consumer loop's one broad catch: the job comes back later
        if bus.may_pass(e):  # NATS or the store away (restarting): said without a traceback
            log.warning("session %s: attempt failed, will retry: %s", job.session_id, e)
        else:
            log.exception("session %s: attempt failed", job.session_id)
        outcome = Outcome.RETRY
    finally:
        beat.cancel()
    if outcome is Outcome.ENDED:  # the journal has the end: the job is done, whoever holds it
        await msg.ack()
    elif outcome is Outcome.DROPPED:  # a stale job: another one runs the session
        await msg.ack_sync()
    elif (
        outcome is Outcome.FENCED
        and job.parked_seq
        and await _overtaken_by_another_job(host, msg, job, lease)
    ):
        # A wake job that still holds its job yet was fenced (or saw the journal written by
        # another attempt): another job of the session wrote its journal meanwhile (a
        # second wake job of the same parking, published past JetStream's duplicate window,
        # that read the journal as this one did). That one runs the session: this one is
        # dropped, not delivered again (it would fence the other in turn, and so on until
        # the attempts run out).
        log.info("session %s: a wake job fenced by another one; dropped", job.session_id)
        await msg.ack_sync()
    elif outcome is Outcome.RETRY and lease.valid():
        await msg.nak(delay=retry_delay(msg.metadata.num_delivered or 1))


async def _overtaken_by_another_job(host: Host, msg: Msg, job: wire.Job, lease: Lease) -> bool:
    """Whether a fenced attempt's journal was written by an attempt of another job message
    while this one still held its own (else, by another delivery of this very message,
    which runs the session: acking it would leave nothing to bring the session back if
    that attempt's runner died). The watch knows (``Lease.taken``); a fence at a write
    (the other attempt announced before this one listened) is judged by the last `started`
    record's job message, and taken for another's when the journal cannot be read; never
    once the hold lapsed, before or during that read."""
    if lease.taken:
        return True
    if not lease.valid():
        return False
    # (Its heartbeats are stopped and the read may take long, NATS being slow: the hold may
    # lapse meanwhile and the job be delivered again; an ack then would be that delivery's.)
    own = msg.metadata.sequence.stream
    try:
        history = journal.fold((await read_journal(host.js, job.session_id, host.keys)).records)
        started = history.last_started
        another = started is None or started.job_seq != own
    except Exception as e:
        log.debug("session %s: journal not read after a fence: %r", job.session_id, e)
        another = True
    return another and lease.valid()


def retry_delay(delivery: int) -> float:
    """Seconds before a job whose attempt failed for a passing reason comes back."""
    return min(2.0 ** min(delivery - 1, 5), 30.0)  # (2.0 ** 1024 overflows)


def waiting_deliveries(waited: float) -> int:
    """How many deliveries of a job can have come within ``waited`` seconds of its first
    (each comes ``retry_delay`` or more after the one before)."""
    deliveries, at = 1, 0.0
    while (at := at + retry_delay(deliveries)) <= waited:
        deliveries += 1
    return deliveries


# Seconds by which the clock of a `created` record's writer may differ from NATS's.
CLOCK_SLACK = 2.0


# Fetches started ahead of an attempt's need (``Host.ready_ahead``): held until they end.
_AHEAD: set[asyncio.Task[None]] = set()


async def _attempt(host: Host, msg: Msg, job: wire.Job, lease: Lease, limit: int) -> Outcome:
    delivery = msg.metadata.num_delivered or 1
    history, last, read_us, chunked = journal.History(next_seq=1), job.journal_seq, 0, 0
    written, attempt = (1, 0), 1
    pub = bus.publisher(host.nc)
    chunker = Chunker(pub, host.keys, job.session_id)  # (its `created` record comes first)
    # A runner stopped mid-session, or a parked session wakes up: replay what it journaled.
    # (A first delivery starts at once: its `created` record is looked for meanwhile.)
    if delivery > 1 or job.parked_seq:
        ahead = asyncio.create_task(host.ready_ahead(job))  # meanwhile: code and vars
        _AHEAD.add(ahead)
        ahead.add_done_callback(_AHEAD.discard)
        try:
            t0 = time.perf_counter()
            read = await read_journal(host.js, job.session_id, host.keys)
            records, last, written = read.records, read.last, (len(read.records), read.size)
            chunked = read.chunked
            chunker = Chunker(pub, host.keys, job.session_id, chunked, read.unchunked)
            history = journal.fold(records)
            read_us = int((time.perf_counter() - t0) * 1e6)
        except Exception as e:
            if not isinstance(e, journal.MalformedRecord) and delivery <= limit:
                log.warning(
                    "session %s: cannot read its journal (%r); will retry", job.session_id, e
                )
                return Outcome.RETRY
            # Its end goes after every record, whatever their numbers were.
            history = journal.History(next_seq=journal.AFTER_UNREADABLE)
            last = await last_seq(host.js, job.session_id)
            return await _run(host, msg, job, lease, history, last, delivery).fail(
                f"error: the session's journal cannot be read back for a replay: {e!r}"
            )
        if not records and not (job.journal_seq or job.parked_seq):
            if not await _ended_in_store(host, job):  # its `created` is on its way
                if delivery > limit and _age(msg) > bus.DUPLICATE_WINDOW:
                    # Whoever published it gave up, or a new try of theirs brings a new job
                    # (past the duplicate window): this one goes.
                    log.error(
                        "session %s: its `created` record never came; its job is dropped",
                        job.session_id,
                    )
                    return Outcome.DROPPED
                log.warning(
                    "session %s: its `created` record is not in its journal yet; will retry",
                    job.session_id,
                )
                return Outcome.RETRY
        if not records or history.ended:  # it ended (and may be cleaned up already)
            if history.ended:  # what its attempt may not have finished
                await after_end(host.nc, host.keys, job, history.ended, history)
            return Outcome.ENDED
        if history.last_parked is not None or job.parked_seq:
            if not await _resumes(host, job, history, delivery):
                return Outcome.DROPPED
        # Attempts that failed: since the session last parked, as its journal says (a wake
        # job is a new message), or as its deliveries say when more (a runner that died
        # before its attempt's first record). Before any attempt has started, deliveries
        # may have found no `created` record yet (its publisher's next try stored it
        # later): those ran nothing, and as many as can have come before it was written
        # are not counted.
        failed = max(history.started_since_park, delivery - 1)
        if not history.attempts and records[0].kind == wire.CREATED:
            late = records[0].t_us / 1e6 - _published(msg)
            failed = max(0, delivery - 1 - waiting_deliveries(late + CLOCK_SLACK))
        attempt = history.attempts + 1
        if failed >= limit:
            return await _run(host, msg, job, lease, history, last, attempt).fail(
                gave_up_message(failed, limit, history)
            )
        log.info(
            "session %s: attempt %d replays %d steps", job.session_id, attempt, len(history.steps)
        )
        await host.faults.hold("read", job.entrypoint, attempt)
    run = _run(host, msg, job, lease, history, last, attempt, read_us, written, chunker, chunked)
    # The trace the session belongs to: from the job, else from its journal (a replay).
    headers = dict(msg.headers or {})
    if not headers.get(subjects.HDR_TRACEPARENT) and history.traceparent:
        headers[subjects.HDR_TRACEPARENT] = history.traceparent
    return await run.traced(tracing.extract(headers))


def _published(msg: Msg) -> float:
    """When the message was published (by the NATS server's clock; now if unknown)."""
    stamp = msg.metadata.timestamp
    return stamp.timestamp() if stamp else time.time()


def _age(msg: Msg) -> float:
    """Seconds since the message was published (by the NATS server's clock)."""
    return time.time() - _published(msg)


async def _ended_in_store(host: Host, job: wire.Job) -> bool:
    """Whether the store has the session ended: a journal found empty is then one cleaned
    up after its end; else the session's `created` record, published along with its job,
    is not stored yet (its publisher tries again until it is)."""
    states = await bus.store_call(host.nc, "session.states", {"session_ids": [job.session_id]})
    return states.get(job.session_id) in wire.FINAL_STATES


def _run(
    host: Host,
    msg: Msg,
    job: wire.Job,
    lease: Lease,
    history: journal.History,
    last: int,
    attempt: int,
    read_us: int = 0,
    written: tuple[int, int] = (0, 0),
    chunker: Chunker | None = None,
    chunked: int = 0,
) -> SessionRun:
    writer = JournalWriter(
        host.js,
        bus.publisher(host.nc),
        host.keys,
        job.session_id,
        last,
        history.next_seq,
        lease.valid,
        host.journal_limits,
        written,
        chunker,
    )
    stamp = msg.metadata.timestamp
    queued = stamp.timestamp() if stamp else 0.0
    return SessionRun(host, job, attempt, history, lease, writer, queued, read_us, chunked)


async def _resumes(host: Host, job: wire.Job, history: journal.History, delivery: int) -> bool:
    """Whether this job runs a session that parked at some time (else it is stale: acked).

    Only the wake job of the session's last parking resumes it, so that no two jobs of one
    session run at once: any other job whose journal ends parked makes sure the session is
    in AK_PARKED (its runner may have stopped before it was put there) and is dropped."""
    last = history.last_parked[0] if history.last_parked else 0
    if last != job.parked_seq:  # the job of an earlier parking (or the session's first)
        if history.last_parked is not None and history.parked_at and host.parking is not None:
            parked = history.last_parked[1]
            trace = history.traceparent
            entry = parked_entry(job, last, parked, trace, host.session_timeout)
            await host.parking.ensure(job.session_id, entry)
        log.info("session %s: a stale job dropped (it parked since)", job.session_id)
        return False
    if history.parked_at == last:
        return True  # the wake job of its last parking: it resumes from there
    # The journal went on after that parking: the wake job's own earlier delivery (its
    # runner stopped) or, on a first delivery, another wake job of the same parking.
    return delivery > 1


def gave_up_message(attempts: int, limit: int, history: journal.History) -> str:
    """Why a session that used up its attempts ends in ERROR, and what to do."""
    text = (
        f"error: the session did not finish in {attempts} attempts and is not tried again "
        f"(AK_JOBS__MAX_ATTEMPTS is {limit}). "
    )
    retry = history.last_retry
    if retry is not None and retry.attempt == history.attempts:
        return text + f"The last attempt stopped with: {retry.error}"
    return text + (
        "Each time, the runner running it stopped before it ended: it was killed or crashed "
        "(for example out of memory), or froze for longer than the heartbeat allows "
        "(AK_JOBS__ACK_WAIT)."
    )


async def _warm(host: Host) -> None:
    """Starts spare workers for the default environment as the runner starts, so that the
    first sessions (a dead runner's, taken over) do not wait for Python to start. Only when
    that environment is ready: building it is left to the first session that needs it."""
    envs = host.envs
    try:
        if not envs.worker_python and not is_ready(spec_for(None)):
            return
        python, extra_env, _ = await envs.python_for(None)
        await host.pool.warm(python, host.spawn_env(extra_env))
    except (EnvError, OSError) as e:
        log.warning("no spare workers started ahead: %s", e)


def _sandbox(settings: Settings) -> UserIds | None:
    """User ids for workers when the runner can switch to them (it is root), after closing
    the data home to them; None otherwise."""
    if not settings.sandbox:
        log.warning(
            "the worker sandbox is off (AK_RUNNER__SANDBOX=off): handlers run as %d", os.geteuid()
        )
        return None
    if not is_root():
        return None  # `ak up` says so
    seal_data_home(config.data_home())
    first, last = settings.worker_uids
    log.info("workers run as user ids %d-%d (the sandbox)", first, last)
    _fence(settings)
    groups, why = WorkerGroups.find()
    if groups is not None:
        log.info(
            "the kernel holds each worker's processes to its memory limit together "
            "(control groups under %s)%s",
            groups.parent,
            "" if groups.cpu is None else f", and to one share of the CPU ({groups.cpu})",
        )
    else:
        log.warning("workers' memory is counted twice a second, not held by the kernel: %s", why)
    hidden = _hidden(settings)
    temp = ""
    if settings.worker_temp == "host":
        log.info(
            "handlers share this host's temporary directories, on its disk (%s=host)",
            config.ENV_WORKER_TEMP,
        )
    elif hidden:
        temp = temp_dirs(settings)
    return UserIds(first, last, lock_dir(), hidden, groups, temp)


def _hidden(settings: Settings) -> str:
    """The directory sandboxed workers do not see (``netfence.hidden``), said once."""
    env = worker_env(dict(os.environ), settings.worker_env)
    hidden, why = netfence.hidden(settings.worker_python, env)
    if hidden:
        log.info("handlers do not see %s (this host's services' Unix sockets)", hidden)
    else:
        log.warning(
            "handlers see %s (this host's services' Unix sockets; file permissions alone "
            "keep them out; in a container, its own): %s",
            netfence.HIDDEN,
            why,
        )
    return hidden


def _fence(settings: Settings) -> None:
    """Keeps the workers' user ids off this host's addresses (``akcore.netfence``); raises
    when it cannot and the settings require it."""
    first, last = settings.worker_uids
    mode = settings.network_fence
    try:
        done = netfence.apply(mode, first, last, settings.http_addr, settings.host_ports)
    except netfence.FenceError as e:
        raise AKError(
            f"handlers cannot be fenced off this host: {e}; the runner does not start "
            f"({config.ENV_NETWORK_FENCE}=required)"
        ) from None
    if mode == "off" and done.problem:
        log.warning("could not remove the network fence of an earlier runner: %s", done.problem)
    elif done.kept_for:
        log.warning(
            "%s=off, but the network fence of user ids %d-%d stays for the other stacks "
            "that use them (processes %s): give this one other %s",
            config.ENV_NETWORK_FENCE,
            first,
            last,
            ", ".join(map(str, done.kept_for)),
            config.ENV_WORKER_UIDS,
        )
    elif mode == "off":
        log.info("handlers may connect to services on this host (%s=off)", config.ENV_NETWORK_FENCE)
    elif done.problem:
        log.warning(
            "handlers may connect to services on this host: %s (docs/security.md, checklist "
            "item 7; %s=off says you know)",
            done.problem,
            config.ENV_NETWORK_FENCE,
        )
    else:
        log.info(
            "handlers may not connect to this host's addresses but its ports %s (nftables "
            "table inet %s)",
            ", ".join(map(str, done.ports)),
            netfence.table_name(first, last),
        )


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    runner_id = f"{socket.gethostname()}-{os.getpid()}"
    cache = BuildCache(
        config.data_home() / "runner" / "builds",
        settings.build_cache_mb * 1024 * 1024,
        settings.build_cache_idle,
    )
    users = _sandbox(settings)
    if users is not None and (left := await asyncio.to_thread(users.sweep)):
        log.warning(
            "killed what %d worker user id(s) left running with no runner holding them (a "
            "runner that died): %s",
            len(left),
            ", ".join(map(str, left[:10])) + (" ..." if len(left) > 10 else ""),
        )
    sdk_copies = config.data_home() / "runner" / "sdk"
    envs = PythonEnvs(
        settings.worker_python,
        sdk_copies,
        users,
        timeout=settings.packages_timeout,
        memory_mb=settings.packages_memory_mb,
        env_names=settings.worker_env,
        files=settings.worker_files,
        builds=settings.packages_builds,
        min_free_mb=settings.packages_min_free_mb,
        venvs=VenvCache(
            config.project_venvs(),
            settings.venvs_mb * 1024 * 1024,
            settings.venvs_idle,
            locks=config.data_home() / "runner" / "venvs-locks",
        ),
    )
    spare = config.data_home() / "runner" / "spare"
    spare.mkdir(parents=True, exist_ok=True)
    processes = settings.worker_processes if users is not None else 0  # counted per user
    hidden = users.hidden if users is not None else ""
    groups = users.groups_arg if users is not None else ""
    temp = users.temp if users is not None else ""
    worker_limits = WorkerLimits(
        settings.worker_memory_mb, processes, hidden, groups, settings.worker_files, temp
    )
    pool = WorkerPool(
        settings.warm_workers,
        spare,
        settings.worker_sessions,
        settings.fork_workers,
        users,
        settings.echo_prints,
        sdkdist.write_copy(sdk_copies) if users is not None else None,
        worker_limits,
    )
    inboxes = InboxWatch()
    lanes: list[Lanes] = []  # (made once the streams are there)

    async def reconnected() -> None:
        await inboxes.resync()
        for each in lanes:
            each.forget()

    nc = await bus.connect_service(settings, "runner", on_reconnect=reconnected)
    keys = load_keyring()  # the runner seals the journal; its workers never see the key
    await keycheck.first(nc, keys, stop)  # before it seals or opens anything
    tel = tracing.Telemetry("runner")
    tel.send_to_store(nc)
    env_cache = StoreCache(
        ahead=True, kind=Cache.SESSION_ENV
    )  # asked again in the background while in use
    await env_cache.watch(nc)
    await inboxes.watch(nc)
    js = nc.jetstream()
    base_env = worker_env(dict(os.environ), settings.worker_env)
    faults = Faults.from_env(nc)
    limits = Limits(settings.journal_max_records, settings.journal_max_bytes)
    host = Host(
        nc,
        cache,
        envs,
        pool,
        tel,
        runner_id,
        env_cache,
        inboxes,
        js,
        base_env,
        keys,
        faults=faults,
        journal_limits=limits,
        worker_limits=worker_limits,
        session_timeout=settings.session_timeout,
        memory=MemoryWatch(users),
        parking=Parking(js, settings.park_after),
    )
    await bus.wait_streams(js, "runner")
    await bus.serve_health(nc, "runner")
    await bus.serve_requests(
        nc, subjects.RUNNER_ALL, request_handler(envs, nc, keys), queue="runners"
    )
    info = await js.consumer_info(subjects.STREAM_JOBS, subjects.lane_consumer(0))
    ack_wait = info.config.ack_wait or bus.JOB_ACK_WAIT
    # A job's lease runs from when its pull request was sent: keep requests short of it.
    expires = min(5.0, max(0.5, ack_wait / 4))
    wake = asyncio.Event()  # a job arrived, a request ended, a session ended
    jobs = await Lanes.bind(
        nc, expires, wake, settings.runner_concurrency, host.admission.waiting_in
    )
    lanes.append(jobs)
    live: set[asyncio.Task[None]] = set()
    reaper = asyncio.create_task(_reap(pool, stop))
    pruner = asyncio.create_task(_prune(host, stop))
    warming = asyncio.create_task(_warm(host))
    service.settle_heap()
    log.info(
        "runner %s ready (up to %d sessions running and %d waiting)",
        runner_id,
        settings.runner_concurrency,
        settings.runner_max_waiting,
    )
    admission = host.admission
    while not stop.is_set():
        wake.clear()
        admission.changed.clear()
        # Jobs delivered start at once: they hold no heartbeat while they wait here, and
        # there are no more of them than the lanes were asked for.
        started = False
        for lane, msg, since in jobs.take_ready():
            job = handle_job(host, msg, ack_wait, since, settings.max_attempts)
            task = asyncio.create_task(job)
            live.add(task)
            task.add_done_callback(live.discard)
            task.add_done_callback(functools.partial(jobs.ended, lane))
            started = True
        if started:  # the jobs taken first: their sessions start before anything is asked
            await asyncio.sleep(0)
        # Waiting sessions (sleeps, next_event) do not count against the sessions running.
        workers = settings.runner_concurrency + settings.runner_max_waiting - len(live)
        free = min(settings.runner_concurrency - (len(live) - admission.waiting), workers)
        await jobs.ask(free, workers)
        if jobs.ready:  # delivered meanwhile
            continue
        woken = asyncio.create_task(wake.wait())
        changed = asyncio.create_task(admission.changed.wait())
        await asyncio.wait({woken, changed}, return_when=asyncio.FIRST_COMPLETED, timeout=1.0)
        woken.cancel()
        changed.cancel()
    # Stopping: live sessions keep their jobs un-acked, so another runner takes them over.
    for task in live:
        task.cancel()
    warming.cancel()
    await asyncio.gather(*live, reaper, warming, pruner, return_exceptions=True)
    await jobs.close()
    await pool.close()
    await host.memory.close()
    await tel.close()
    await bus.close(nc)
