"""Runs one attempt of one session: journal its steps, start the worker, serve its frames,
record the end. The attempt writes the journal only while it owns it (``JournalWriter``)
and its job (``Lease``); the moment either is lost it kills its worker and stops."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import os
import pickle
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from akcore import bus, credheaders, ids, journal, parking, subjects, timefmt, tracing, wire
from akcore.bus import may_pass
from akcore.cache import StoreCache
from akcore.cgroups import GroupError, Stops
from akcore.config import ENV_SESSION_TIMEOUT, ENV_WORKER_MEMORY_MB, REQUIREMENTS_FILE
from akcore.datakey import Keyring, SealError
from akcore.errors import AKError, InvalidArgument, Unavailable
from akcore.journal import Kind, Parked, Started
from akcore.journalio import (
    Fenced,
    JournalFull,
    JournalWatch,
    JournalWriter,
    Limits,
    RecordTooLarge,
    created_seq,
)
from akcore.sessions import job_data
from autokitteh._frames import (
    MAX_ERROR_TYPE,
    ActivityFrame,
    DoneFrame,
    FrameError,
    PrintFrame,
    StepFrame,
    SyscallFrame,
    cut_middle,
    cut_print,
    parse,
)
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, Span, SpanKind

from .builds import BuildCache, Held
from .faults import Faults
from .inbox import Inbox, InboxWatch, seal_payload
from .lease import Lease
from .parking import Parking
from .pyenv import EnvError, PythonEnvs, RequirementsError
from .sandbox import KERNEL_STOPPED, MemoryWatch, WorkerLimits
from .syscalls import SyscallError, Syscalls
from .worker import WorkerPool, WorkerProcess

log = logging.getLogger(__name__)

# The worker holds no more than this of an activity's pickled outcome (autokitteh._runtime).
MAX_RESULT = 1024 * 1024


class Outcome(enum.Enum):
    ENDED = "ended"  # the journal has the session's end: ack the job
    FENCED = "fenced"  # another attempt owns the session, or this one lost its job
    RETRY = "retry"  # stopped for a reason that may pass (NATS or the store away)
    PARKED = "parked"  # the session parked: its job is acked already
    DROPPED = "dropped"  # a stale job (of a session parked or resumed since): ack it


class SessionError(Exception):
    """Ends the session in ERROR with this message (a failure that would repeat)."""


class EnvAway(Exception):
    """A session that has run before found its Python environment gone (removed from the
    disk since, ``VenvCache``) and could not have it built again: pip failed, for a reason
    that may pass (the package index away, the disk full). The attempt is tried again
    later, as when NATS is away, until the session's attempts run out."""


class Admission:
    """How many of a runner's live sessions are waiting (a durable sleep of a second or
    more, ``next_event``, ``next_signal``): those hold a worker process but no CPU, so
    they do not count against the sessions a runner runs at once."""

    def __init__(self) -> None:
        # By lane of AK_JOBS (``subjects.job_lane`` of the session's project): the runner
        # hands its places to lanes by the sessions they run, not those that wait.
        self.waiting_in = [0] * len(subjects.RUNNER_CONSUMERS)
        self.changed = asyncio.Event()

    @property
    def waiting(self) -> int:
        return sum(self.waiting_in)

    def begin(self, lane: int) -> None:
        self.waiting_in[lane] += 1
        self.changed.set()

    def end(self, lane: int) -> None:
        self.waiting_in[lane] -= 1
        self.changed.set()

    @contextmanager
    def wait(self, lane: int) -> Iterator[None]:
        self.begin(lane)
        try:
            yield
        finally:
            self.end(lane)


@dataclass(frozen=True)
class Host:
    """What a runner shares with all its sessions."""

    nc: Client
    cache: BuildCache  # unpacked builds
    envs: PythonEnvs
    pool: WorkerPool
    tel: tracing.Telemetry
    runner_id: str
    env_cache: StoreCache  # each project's vars (`session.env`)
    inboxes: InboxWatch  # the inboxes of the sessions running here
    js: JetStreamContext
    worker_env: dict[str, str]  # what of ours workers get (config.worker_env)
    keys: Keyring  # seals and unseals the journal
    faults: Faults = field(default_factory=lambda: Faults([]))
    journal_limits: Limits = field(default_factory=Limits)
    # Each build's project, directory and requirements.txt, once unpacked (builds never change).
    builds: dict[str, tuple[str, Path, bytes | None]] = field(default_factory=dict)
    fetching: dict[str, asyncio.Task[tuple[str, Path, bytes | None]]] = field(
        default_factory=dict
    )  # builds being fetched (``build``)
    admission: Admission = field(default_factory=Admission)
    worker_limits: WorkerLimits = field(default_factory=WorkerLimits)
    session_timeout: float = 0.0  # seconds an attempt may run (0: no limit)
    memory: MemoryWatch = field(default_factory=MemoryWatch)  # sandboxed workers' totals
    parking: Parking | None = None  # None or ``after`` 0: sessions never park

    async def build(self, build_id: str) -> tuple[str, Path, bytes | None]:
        """A build's project, directory and requirements.txt: fetched and unpacked once per
        runner (builds never change); callers asking while it is fetched share the fetch."""
        known = self.builds.get(build_id)
        if known is not None:
            return known
        fetch = self.fetching.get(build_id)
        if fetch is None:  # (a failed fetch is forgotten: the next caller tries again)
            fetch = self.fetching[build_id] = asyncio.create_task(self._fetch(build_id))
            fetch.add_done_callback(_retrieved)
        return await asyncio.shield(fetch)

    async def hold_build(self, build_id: str) -> tuple[str, Path, bytes | None, Held]:
        """``build``, and a hold on its directory that keeps it from being pruned until
        the session lets go of it (``Held.close``)."""
        for _ in range(3):
            known = await self.build(build_id)
            held = self.cache.hold(build_id)
            if held is not None:
                return *known, held
            self.builds.pop(build_id, None)  # pruned since (by another runner): again
        raise Unavailable(f"build {build_id} keeps being removed from the runner's cache")

    async def _fetch(self, build_id: str) -> tuple[str, Path, bytes | None]:
        try:
            code_dir = self.cache.root / build_id
            fetched = not code_dir.is_dir()  # unpacked atomically: a directory is a whole build
            build = await bus.store_call(
                self.nc, "build.get", {"build_id": build_id, "with_files": fetched}
            )
            if fetched:  # thousands of files take seconds: off the event loop (heartbeats)
                code_dir = await asyncio.to_thread(self.cache.unpack, build_id, build["files"])
                await self.prune(keep=build_id)
            req = code_dir / REQUIREMENTS_FILE
            known = self.builds[build_id] = (
                build["project_id"],
                code_dir,
                req.read_bytes() if req.is_file() else None,
            )
            return known
        finally:
            self.fetching.pop(build_id, None)

    async def prune(self, keep: str = "") -> None:
        """Removes unpacked builds no session needs (``BuildCache.prune``), and forgets them."""
        try:
            removed = await asyncio.to_thread(self.cache.prune, keep)
        except OSError as e:  # the disk: the next prune tries again
            log.warning("pruning unpacked builds failed: %s", e)
            return
        for build_id in removed:
            self.builds.pop(build_id, None)

    async def ready_ahead(self, job: wire.Job) -> None:
        """Fetches what the job's session will need (its build, its project's vars) while
        something else goes on (reading its journal for a replay). Failures are left to the
        session's own asks, which wait and say why."""
        await asyncio.gather(
            self.build(job.build_id), self.variables(job.project_id), return_exceptions=True
        )

    async def variables(self, project_id: str) -> dict[str, str]:
        """A project's vars, as its sessions get them (cached: ``env_cache``)."""
        found: dict[str, str] = await self.env_cache.call(
            self.nc, "session.env", {"project_id": project_id}, project_id
        )
        return found

    def spawn_env(self, extra_env: dict[str, str]) -> dict[str, str]:
        """A worker's environment: the little it gets of the runner's and what its
        interpreter needs (``extra_env``, its PYTHONPATH put first; updated in place). A
        session's own variables go in its start frame, on top."""
        base = dict(self.worker_env)
        if extra_env.get("PYTHONPATH") and base.get("PYTHONPATH"):
            extra_env["PYTHONPATH"] += os.pathsep + base["PYTHONPATH"]
        base.update(extra_env)
        return base


class SessionRun:
    """One attempt at one session; ``history`` is what earlier attempts journaled."""

    def __init__(
        self,
        host: Host,
        job: wire.Job,
        attempt: int,
        history: journal.History,
        lease: Lease,
        writer: JournalWriter,
        queued_at: float = 0.0,  # when its job was published (NATS server time), if known
        read_us: int = 0,  # how long reading the journal took
        chunked: int = 0,  # how many of the records read came from replay chunks
    ) -> None:
        self.host, self.job, self.attempt, self.history = host, job, attempt, history
        self.lease, self.writer, self.queued_at, self.read_us = lease, writer, queued_at, read_us
        self.chunked = chunked
        self.nc, self.js, self.tel = host.nc, host.js, host.tel
        self.pub = bus.publisher(host.nc)
        self.env: dict[str, str] = {}
        self.python_env = ""
        self.span: Span = NonRecordingSpan(INVALID_SPAN_CONTEXT)  # until traced() starts it
        self.attrs = {
            "ak.session_id": job.session_id,
            "ak.project": job.project_id,
            "ak.deployment_id": job.deployment_id,
        }
        self.ended = False
        self.held: Held | None = None  # its build's directory, while the attempt uses it
        self.venv_held: Held | None = None  # its project environment's, likewise
        self.stop_reason: str | None = None
        self.stops = Stops()  # what the kernel had done at its worker's memory limit before
        self.stop_state = wire.STOPPED
        self._stop = asyncio.Event()
        self.lane = subjects.job_lane(job.project_id)
        self.inbox = Inbox(
            self.js,
            job.session_id,
            history.consumed,
            self._request_stop,
            functools.partial(host.admission.wait, self.lane),
        )
        self.asleep = False  # in a durable sleep that counts as waiting (see Admission)
        self.syscalls = Syscalls(self.nc, job, self.inbox, self.js, host.keys)
        self.next_step = 1  # the durable step the worker must ask for next
        self.granted: StepFrame | None = None  # the live activity the worker may run
        self.grant = 0  # the step a go-ahead was given for in advance (``_grant``), if any
        # Parking: the wait the session is in now (while it may park), and the timer that
        # parks it once it has waited AK_RUNNER__PARK_AFTER.
        self.wait: journal.Parked | None = None
        self._park = asyncio.Event()
        self._park_timer: asyncio.TimerHandle | None = None
        self.parked = False
        self.park_journaled = False  # its `parked` record is written (see _park_now)
        self.begun: asyncio.Task[None] | None = None  # writing `started` (see _run)
        job_seq = lease.msg.metadata.sequence.stream  # (of the job message it runs)
        self.watch = JournalWatch(  # (listens from _run on; its first record announces it)
            host.nc, writer, self._taken, job_seq, attempt, host.runner_id
        )
        self._located = asyncio.Event()  # the place of `started` is known (see _locate)
        # When AK_RUNNER__SESSION_TIMEOUT started counting (µs): as the attempt starts, but
        # an attempt a wake starts goes on with the clock of the attempt that parked (the
        # limit means the same with parking on or off); one after a crash starts afresh.
        self.clock_us = timefmt.now_us()
        parked = history.last_parked
        if history.parked_at and parked is not None and parked[1].clock_us:
            self.clock_us = min(self.clock_us, parked[1].clock_us)

    # --- the journal

    def _fault(self, point: str, step: int = 0) -> None:
        heartbeats = self.host.faults.at(point, self.job.entrypoint, self.attempt, step)
        if heartbeats == "no_heartbeats":
            self.lease.beating = False
        elif heartbeats == "forgotten_heartbeats":
            self.lease.forgotten = True

    async def journal(self, p: journal.Payload, step: int = 0) -> None:
        """Appends a record once JetStream acknowledges it (write-ahead); raises Fenced,
        JournalFull (but for the end). Waits for the attempt's first write (``_run``)."""
        await self._begun()
        await self._locate()
        if step:
            self._fault("journaling", step)
        await self.writer.append(p, final=isinstance(p, (journal.Ended, journal.Retry)))
        if step:
            self._fault("journaled", step)

    async def _locate(self) -> None:
        """A first delivery's job does not say where its `created` record is (it was
        published with it): the first write looks it up, to append after it (fenced)."""
        if not self.writer.last:
            self.writer.located(*await created_seq(self.js, self.job.session_id))

    async def _may_start(self) -> None:
        """Returns once the worker may be told to start; raises what writing `started`
        raised if it failed first.

        At once for a job published less than ``FRESH_JOB`` ago: the session's only job
        (JetStream drops a repeated one within its duplicate window), so its session has
        not run yet; its `created` record is looked up meanwhile. (It may be missing: its
        publish failed while the job's did not. The handler then runs up to its first
        step, which never comes, and runs again once the publisher has tried again: as
        after a runner crash.) An older job waits until its journal is known to hold only
        `created`: a job of a session that ended (its journal cleaned up) runs nothing."""
        begun = self.begun
        if not self.lease.valid():  # (a runner frozen since its job came starts nothing)
            raise Fenced(f"it lost its job before its worker started ({self.lease.lost_because})")
        if begun is None or self._located.is_set():
            return
        if self.queued_at and time.time() - self.queued_at < FRESH_JOB:
            return
        located = asyncio.ensure_future(self._located.wait())
        try:
            await asyncio.wait({located, begun}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            located.cancel()
        if not self._located.is_set():
            await self._begun(all_errors=True)

    async def _begun(self, all_errors: bool = False) -> None:
        """Returns once the attempt's `started` record is written (``_run``). Raises Fenced
        when another attempt owns the journal; ``all_errors``: also what else writing it
        raised (raised once, where the worker is served: the end may be written after it)."""
        begun = self.begun
        if begun is None:
            return
        if not begun.done():
            await asyncio.shield(begun)
        if begun.cancelled():  # (only when the whole attempt is cancelled)
            raise Fenced(f"session {self.job.session_id}: its `started` record was not written")
        error = begun.exception()
        if error is not None and (all_errors or isinstance(error, Fenced)):
            raise error

    async def end(
        self,
        state: str,
        error: str = "",
        traceback: str = "",
        result: bytes | None = None,
        error_type: str = "",
    ) -> None:
        self.span.set_attribute("ak.state", state)
        if state == wire.ERROR:
            tracing.fail(self.span, error_type or "Error")
        inbox = self.inbox.reading or self.host.inboxes.heard_of(self.job.session_id)
        ended = journal.Ended(
            state=state, error=error, traceback=traceback, result=result, inbox=inbox
        )
        try:
            await self.journal(ended)
        except RecordTooLarge:
            error = (
                f"error: the handler's return value is {len(result or b'')} bytes encoded, more "
                "than a journal record can hold; return less (store big data elsewhere and "
                "return a reference)"
            )
            ended = journal.Ended(state=wire.ERROR, error=error, inbox=inbox)
            await self.journal(ended)
        self.ended = True
        # Not the error itself: a handler's exception may carry a secret (`ak session get`
        # shows it to the session's owner).
        log.info("session %s: %s %s", self.job.session_id, state, error_type)
        self._fault("ended")
        await after_end(self.nc, self.host.keys, self.job, ended, self.history, self.syscalls)

    # --- the attempt

    async def traced(self, parent: Context) -> Outcome:
        """Runs the attempt inside the session's span (a child of whatever started it)."""
        job = self.job
        ctx = tracing.with_session(parent, job.session_id, job.project_id, job.deployment_id)
        attrs = {**self.attrs, "ak.entrypoint": job.entrypoint, "ak.attempt": self.attempt}
        name = f"session {job.entrypoint}"
        with self.tel.span(name, parent=ctx, kind=SpanKind.CONSUMER, attributes=attrs) as span:
            self.span = span
            if self.attempt > 1:
                span.add_event(
                    "replay",
                    {"ak.attempt": self.attempt, "ak.replayed_steps": len(self.history.steps)},
                )
            return await self.run()

    async def run(self) -> Outcome:
        """The attempt, start to end; never raises for what a session or NATS can cause."""
        try:
            return await self._attempt()
        finally:
            await self.watch.stop()
            for held in (self.held, self.venv_held):
                if held is not None:
                    held.close()  # its build and environment may be pruned now

    def _taken(self, why: str, same_job: bool) -> None:
        """Another attempt writes the session's journal: this one stops at once (its worker
        killed, nothing more written, its job not heartbeated). Its job is left alone when
        the other runs a delivery of the same message, or when this attempt's hold on it
        had lapsed anyway; else (``Lease.taken``) a wake job may be dropped (ak_runner.service)."""
        self.lease.lose(why, taken=not same_job and self.lease.valid())

    async def _attempt(self) -> Outcome:
        try:
            await self._run()
            return Outcome.PARKED if self.parked else Outcome.ENDED
        except Fenced as e:
            log.warning("session %s: attempt %d stops: %s", self.job.session_id, self.attempt, e)
            return Outcome.FENCED
        except SessionError as e:
            return await self.fail(str(e))
        except EnvAway as e:
            return await self._retry(e)
        except RecordTooLarge as e:
            return await self.fail(f"error: {e}; the session cannot go on")
        except JournalFull as e:
            return await self.fail(f"error: {e}")
        except Exception as e:
            if self.parked:  # (cleaning up after it): its job is acked, it must not end
                log.warning("session %s: parked; then: %r", self.job.session_id, e)
                return Outcome.PARKED
            if may_pass(e):  # NATS or the store away: another attempt, with replay
                return await self._retry(e)
            # A bug of ours: it would happen again, so do not loop.
            log.exception("session %s: runner failure", self.job.session_id)
            return await self.fail(f"error: the runner failed running this session: {e!r}")

    async def _retry(self, e: BaseException) -> Outcome:
        why = f"{type(e).__name__}: {e}".rstrip(": ")
        log.warning(
            "session %s: attempt %d stops, will retry: %s", self.job.session_id, self.attempt, why
        )
        if self.ended or self.park_journaled:  # nothing goes after the end or the `parked`
            return Outcome.RETRY  # record: the next delivery finishes what follows
        try:
            await self.journal(journal.Retry(attempt=self.attempt, error=why))
        except Fenced:
            return Outcome.FENCED
        except Exception as err:  # the journal may be what is away
            log.debug("session %s: retry not journaled: %r", self.job.session_id, err)
        return Outcome.RETRY

    async def fail(self, error: str) -> Outcome:
        """Ends the session in ERROR with ``error`` (unless it ended already)."""
        if self.ended:
            return Outcome.ENDED
        try:
            await self.end(wire.ERROR, error)
        except Fenced:
            return Outcome.FENCED
        except Exception as e:
            if not may_pass(e):  # JetStream refusing the end itself: nothing else to try
                log.exception("session %s: its end could not be written", self.job.session_id)
                return Outcome.RETRY
            return await self._retry(e)
        return Outcome.ENDED

    async def _code(self) -> tuple[Path, bytes | None]:
        """The build's directory, held until the attempt ends (``Host.hold_build``), and
        its requirements.txt, if any."""
        job = self.job
        if self.held is not None:  # (asked again after the store was away)
            self.held.close()
        project, code_dir, requirements, self.held = await self.host.hold_build(job.build_id)
        if project != job.project_id:  # a forged job: never another project's code with its vars
            raise InvalidArgument(f"build {job.build_id} is not a build of this session's project")
        return code_dir, requirements

    async def _prepare(self) -> tuple[Path, bytes | None, dict[str, str]]:
        """The code and the project's vars, waiting while the store is away (the job is
        held and heartbeated meanwhile: no attempt is spent on it)."""
        job, pause = self.job, 0.5
        while True:
            try:
                code = await self._code()
                return *code, await self.host.variables(job.project_id)
            except Unavailable as e:
                if not self.lease.valid():
                    raise Fenced(f"lost its job while the store was away ({e})") from None
                log.warning("session %s: %s; waiting", job.session_id, e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _run(self) -> None:
        job = self.job
        await self.watch.start()
        started = journal.Started(
            runner=self.host.runner_id,
            attempt=self.attempt,
            replayed_steps=len(self.history.steps),
            read_us=self.read_us,
            chunked=self.chunked,
            job_seq=self.watch.job_seq,
        )
        try:
            code_dir, requirements, variables = await self._prepare()
        except (AKError, OSError, ValueError) as e:
            if isinstance(e, Unavailable):
                raise
            await self.journal(started)  # fenced: the session is still this attempt's
            await self.end(wire.ERROR, f"error: could not prepare the session's code: {e}")
            return
        # The attempt's first write (a stale attempt stops there). In a first attempt it goes
        # on while the worker is taken and told to start (``_may_start``): the handler's
        # first line does not wait for it, but every later write does (``journal``), and so
        # does every frame of the worker's (``_converse``): no activity, print or system
        # call of the handler's goes ahead before it is acknowledged, and a refused write
        # kills the worker. A later attempt (another may still be running the session)
        # writes it before its worker starts.
        # (Left to finish when the attempt stops first: it writes nothing once its job is
        # lost, and the attempt's end, if any, is written after it.)
        self.begun = asyncio.create_task(self._begin(started))
        self.begun.add_done_callback(_retrieved)
        if self.attempt > 1:
            await self._begun(all_errors=True)
        await self._take_and_run(job, code_dir, requirements, variables)

    async def _begin(self, started: Started) -> None:
        await self._locate()
        self._located.set()
        await self.writer.append(started)
        self._fault("started")

    def _has_run(self) -> bool:
        """Whether the session ran before this attempt (a replay or a wake-up): its
        environment was there then, and what it did is kept only if it can go on."""
        return self.attempt > 1 or bool(self.job.parked_seq) or bool(self.history.steps)

    async def _stop_asked(self) -> bool:
        """Whether the inbox holds a stop request not yet taken (read to its end): an
        attempt that cannot run its handler (``EnvAway``) ends then, as asked, instead of
        being tried again until its attempts run out, the stop unread."""
        try:
            await self.inbox.open()
            if self.inbox.reading:
                await self.inbox.read_up_to_now()
        except Exception as e:  # (NATS away: tried again, as the attempt is)
            log.debug("session %s: inbox not read: %r", self.job.session_id, e)
        finally:
            await self.inbox.close()
        return self.stop_reason is not None

    async def _take_and_run(
        self, job: wire.Job, code_dir: Path, requirements: bytes | None, variables: dict[str, str]
    ) -> None:
        try:
            # (Held until the attempt ends: ``run`` lets go of it.)
            envs = self.host.envs
            python, extra_env, self.python_env, self.venv_held = await envs.hold_python_for(
                requirements, job.project_id
            )
        except EnvError as e:
            if self._has_run() and not isinstance(e, RequirementsError):
                if not await self._stop_asked():
                    raise EnvAway(
                        f"its Python environment could not be built: {e.message}"
                    ) from None
                await self.end(self.stop_state, self.stop_reason or "stopped")
                return
            await self.end(wire.ERROR, f"error: the session's Python environment: {e.message}")
            return
        base = self.host.spawn_env(extra_env)
        self.env = {**variables, **extra_env}
        try:
            build = self.venv_held.build if self.venv_held else None
            worker = await self.host.pool.take(python, base, job.project_id, build)
        except GroupError as e:  # (not the interpreter's doing: the runner's machine's)
            await self.end(wire.ERROR, f"error: no worker for the session: {e}")
            return
        except OSError as e:
            await self.end(
                wire.ERROR,
                f"error: could not start the worker Python {python!r}: {e}",
                "set AK_WORKER_PYTHON to a Python 3.11+ interpreter",
            )
            return
        worker.reusable = False  # until its session ends with a `done` that says so
        watch = self.host.inboxes
        watch.live[job.session_id] = self.inbox
        try:
            fresh = self.attempt == 1 and watch.heard_all_since(self.queued_at)
            if not fresh or watch.heard_of(job.session_id):
                await self.inbox.open()  # something may be waiting: look
            await self._run_until_stopped(worker, code_dir)
        finally:
            if not self.ended:
                worker.kill()  # whatever stopped the attempt, its handler must not go on
            self._awake()
            if watch.live.get(job.session_id) is self.inbox:
                del watch.live[job.session_id]
            await self.inbox.close()
            await self.host.pool.give_back(worker, python, base, job.project_id)

    def _awake(self) -> None:
        self._disarm()
        if self.asleep:
            self.asleep = False
            self.host.admission.end(self.lane)

    def _request_stop(self, reason: str, failed: bool = False) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason or "stopped"
            self.stop_state = wire.ERROR if failed else wire.STOPPED
            self._stop.set()

    async def _run_until_stopped(self, worker: WorkerProcess, code_dir: Path) -> None:
        """Runs the conversation; a stop request kills the worker wherever the handler is,
        and so does the loss of the job."""
        talk = asyncio.create_task(self._converse(worker, code_dir))
        stop = asyncio.create_task(self._stop.wait())
        lost = asyncio.create_task(self.lease.lost.wait())
        timer = asyncio.create_task(self._time_limit())
        self.stops = self.host.memory.stops(worker.uid, reset=True)  # this session's: past it
        self._memory_limit(worker)
        try:
            while True:
                park = asyncio.create_task(self._park.wait())
                waits = {talk, stop, lost, park}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                park.cancel()
                if talk.done() or stop.done() or lost.done():
                    break
                wait, self._park = self.wait, asyncio.Event()
                if wait is not None and self._may_park():
                    # The handler waits (the talk is suspended in that wait): it gives up
                    # its worker and its job, nothing of it having been journaled. What the
                    # inbox has read is taken now, before anything else can run: a message
                    # read from here on is past it (and wakes the session).
                    seen = self._seen(wait)
                    talk.cancel()
                    await asyncio.gather(talk, return_exceptions=True)
                    faults = self.host.faults
                    await faults.hold("parking", self.job.entrypoint, self.attempt, self._stop)
                    if self._may_park():
                        await self._park_now(worker, wait, seen)
                        return
                    break  # a stop read meanwhile (or the job lost): not parked
        except BaseException:
            # Cancelled (the runner stopping: its jobs go to another runner un-acked) or
            # failed: the conversation ends here, before the worker is killed, or it would
            # take the worker's death for the handler's and end the session in ERROR.
            talk.cancel()
            await asyncio.gather(talk, return_exceptions=True)
            raise
        finally:
            self.host.memory.unwatch(worker.uid)
            self._disarm()
            for t in (stop, lost, timer):
                t.cancel()
        if talk.done() and not talk.cancelled():
            talk.result()
            if self.ended or not self._stop.is_set():
                return
            # (The worker ended as a stop came, and the talk left its end to the stop.)
        else:
            talk.cancel()
            worker.kill()
            await asyncio.gather(talk, return_exceptions=True)
        if self.lease.taken:
            raise Fenced(self.lease.lost_because)
        if self.lease.lost.is_set():
            raise Fenced(f"it lost its job ({self.lease.lost_because})")
        if not self.ended:
            await self.end(self.stop_state, self.stop_reason or "stopped")

    # --- parking (docs/reliability.md, "Parking")

    def _arm(self, step: int, reason: str, deadline_us: int, wants: list[str]) -> None:
        """The session waits in ``step`` until ``deadline_us`` (0: no deadline) for an
        inbox message of ``wants`` (parking.want; none for a sleep): it parks once it has
        waited AK_RUNNER__PARK_AFTER, unless the wait ends first."""
        self._disarm()
        parking = self.host.parking
        if parking is None or not parking.after or not self.job.is_durable:
            return
        after = parking.after
        if deadline_us and deadline_us - timefmt.now_us() <= after * 1_000_000:
            return  # it ends before it would park
        self.wait = journal.Parked(
            step=step,
            deadline_us=deadline_us,
            reason=reason,
            wants=wants,
            clock_us=self.clock_us,
        )
        self._park_timer = asyncio.get_running_loop().call_later(after, self._park.set)

    def _disarm(self) -> None:
        self.wait = None
        if self._park_timer is not None:
            self._park_timer.cancel()
            self._park_timer = None

    def _may_park(self) -> bool:
        """Whether nothing stands in the way: no activity running, no stop asked for, room
        left in the journal for the `parked` record and the next attempt's `started`."""
        w = self.writer
        return (
            self.granted is None
            and self.stop_reason is None
            and not self.ended
            and self.lease.valid()
            and w.records + 3 < w.limits.records
        )

    def _seen(self, wait: Parked) -> int:
        """The inbox sequence a message past which may wake the session: for a sleep, one it
        has not read (a stop request); for a wait for a message, one the wait has not looked
        at (it may be the one it waits for)."""
        inbox = self.inbox
        return inbox.last_seq if wait.reason == "sleep" else inbox.examined_seq

    async def _park_now(self, worker: WorkerProcess, wait: Parked, seen: int) -> None:
        """Journals the wait, puts the session in AK_PARKED, acks its job, kills its worker.
        A crash between two of these is taken care of by the job's next delivery
        (ak_runner.service), the order being what makes that safe."""
        job, parking = self.job, self.host.parking
        assert parking is not None
        rec = dataclasses.replace(wait, inbox_seq=seen)
        seq = self.writer.seq  # the number the `parked` record takes
        await self.journal(rec)  # fenced, like every record
        self.park_journaled = True  # nothing more is journaled by this attempt
        self._fault("parked")
        trace = self.history.traceparent or (self.lease.msg.headers or {}).get(
            subjects.HDR_TRACEPARENT, ""
        )
        if not self.lease.valid():  # frozen meanwhile: another runner has taken it on
            raise Fenced(f"it lost its job while parking ({self.lease.lost_because})")
        entry = parked_entry(job, seq, rec, trace, self.host.session_timeout)
        await parking.register(job.session_id, entry)
        self._fault("registered")
        self.lease.beating = False
        try:
            await self.lease.msg.ack_sync()
        except Exception as e:  # the next delivery finds the journal parked: it acks then
            log.warning("session %s: parked, its job not acked: %r", job.session_id, e)
        self.parked = True
        worker.kill()
        self.span.add_event("parked", {"ak.step": wait.step, "ak.park.reason": wait.reason})
        log.info("session %s: parked in step %d (%s)", job.session_id, wait.step, wait.reason)

    def _wait_args(self, f: StepFrame) -> tuple[dict[str, Any], int]:
        """The arguments a live next_event/next_signal is served with, and its deadline
        (0: none): a wait that parked before keeps the deadline its `parked` record has,
        so the whole wait never lasts more than the handler asked."""
        args, now = f.args, timefmt.now_us()
        parked = self.history.parked.get(f.step)
        if parked is not None:
            left = None if not parked.deadline_us else max(0.0, (parked.deadline_us - now) / 1e6)
            return {**args, "timeout": left}, parked.deadline_us
        timeout = args.get("timeout")
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
            return args, now + max(1, int(timeout * 1_000_000))
        return args, 0

    async def _time_limit(self) -> None:
        """Ends the session in ERROR once it has run for the session timeout: counted from
        the start of its attempt, or of the attempt that parked when a wake started it."""
        limit = self.host.session_timeout
        if limit <= 0:
            return
        await asyncio.sleep(max(0.0, limit - (timefmt.now_us() - self.clock_us) / 1e6))
        self._request_stop(
            f"session ended: over its time limit of {limit:g} s ({ENV_SESSION_TIMEOUT})",
            failed=True,
        )

    def _memory_limit(self, worker: WorkerProcess) -> None:
        """Ends the session in ERROR once the processes of its worker's user use more than
        the memory limit together (a sandboxed worker; each process alone is held to it by
        its address-space limit)."""
        limit = self.host.worker_limits.memory_mb
        if worker.uid < 0 or limit <= 0:
            return

        def over(what: str) -> None:
            self._request_stop(self._over_memory(True, what), failed=True)

        self.host.memory.watch(worker.uid, limit << 20, over, self.stops)

    # --- the conversation with the worker

    async def _converse(self, worker: WorkerProcess, code_dir: Path) -> None:
        job = self.job
        init = {
            "data": self._event_data(),
            "event_type": job.event_type,
            "event_id": job.event_id,
            # What the journal answers to the recorded steps: the worker replays them
            # without waiting for an answer, and the runner checks each as it comes.
            "replay": replay_ahead(
                self.history, self.host.parking.after if self.host.parking else 0.0
            ),
        }
        start = {
            "type": "start",
            "code_dir": str(code_dir),
            "entrypoint": job.entrypoint,
            "session_id": job.session_id,
            "is_durable": job.is_durable,
            "child": bool(job.parent_session_id),
            "python_env": self.python_env,
            "env": self.env,
            "prints": self.history.prints,
            "limits": self.host.worker_limits.frame(),
        }
        await self._may_start()
        start["clock"] = time.monotonic()  # the worker checks its clock is ours (``_grant``)
        await worker.send(start, pickle.dumps(init))
        await self._begun(all_errors=True)  # nothing of the worker's is served before it
        try:
            async for header, blob in worker.frames(self.job.project_id):
                self._awake()
                frame = parse(header)
                if isinstance(frame, PrintFrame):
                    await self._print(frame, blob)
                elif isinstance(frame, StepFrame):
                    await self._step(worker, frame, blob)
                elif isinstance(frame, ActivityFrame):
                    await self._activity(worker, frame, blob)
                elif isinstance(frame, SyscallFrame):
                    await self._plain_syscall(worker, frame, blob)
                else:
                    await self._done(worker, frame, blob)
                    return
        except FrameError as e:
            raise SessionError(
                f"error: the worker process sent a malformed message ({e}); the session was "
                "ended so that it does not repeat it"
            ) from None
        stopped = self._kernel_stopped(worker)  # (read before its user id is given back)
        code = await worker.close()
        if self._stop.is_set():  # its end is the stop's, not a crash (a cancellation
            return  # of this task that came as it finished is not always delivered)
        tail = "".join(worker.stderr_tail).strip()
        error = f"error: worker process exited with code {code} before the handler finished"
        ran_out = bool(stopped) or "MemoryError" in tail
        await self.end(wire.ERROR, self._over_memory(ran_out, stopped) or error, tail)

    def _kernel_stopped(self, worker: WorkerProcess) -> str:
        """``KERNEL_STOPPED`` when the kernel killed a process of the worker's at its
        memory limit during this session (its control groups), else ""."""
        if worker.uid < 0 or self.host.worker_limits.memory_mb <= 0:
            return ""  # (a kill with no limit is a parent group's or the machine's)
        if not self.host.memory.stops(worker.uid).over_since(self.stops):
            return ""
        return KERNEL_STOPPED

    def _over_memory(self, ran_out: bool, what: str = "") -> str:
        """The message for a session that ran out of memory under the memory limit (""
        when it did not, or there is none), saying ``what`` went over when known."""
        limit = self.host.worker_limits.memory_mb
        if not (ran_out and limit):
            return ""
        said = f"session ended: over its memory limit of {limit} MiB ({ENV_WORKER_MEMORY_MB})"
        return f"{said}: {what}" if what else said

    def _event_data(self) -> Any:
        """The event's data as the handler gets it: its credential headers opened."""
        try:
            data = job_data(self.job, self.host.keys)
            return credheaders.unseal(data, self.job.project_id, self.host.keys)
        except SealError as e:
            raise SessionError(f"error: the session's data cannot be opened: {e.message}") from None

    async def _print(self, f: PrintFrame, blob: bytes) -> None:
        if self.history.is_replayed_print(f.n):
            return  # printed by an earlier attempt
        text, cut = cut_print(blob.decode("utf-8", "replace").removesuffix("\n"))
        await self.journal(
            journal.Print(
                text=text, n=0 if f.activity else f.n, activity=f.activity, cut=f.cut or cut
            )
        )

    async def _done(self, worker: WorkerProcess, f: DoneFrame, blob: bytes) -> None:
        worker.reusable = f.reusable
        if stopped := self._kernel_stopped(worker):
            # A process of its was killed at the memory limit: the session is over it,
            # whatever the handler made of that (as when the memory watch sees it first).
            worker.reusable = False
            await self.end(wire.ERROR, self._over_memory(True, stopped))
        elif f.ok:
            await self.end(wire.COMPLETED, result=blob or None)
        else:
            # (Cut by the worker already; again here, where a handler's own frame is not.)
            error = self._over_memory(f.error_type == "MemoryError") or f.error or "error"
            error, traceback = cut_middle(error), cut_middle(f.traceback)
            await self.end(
                wire.ERROR, error, traceback, error_type=cut_middle(f.error_type, MAX_ERROR_TYPE)
            )

    async def _step(self, worker: WorkerProcess, f: StepFrame, blob: bytes) -> None:
        """A durable step: recorded (replayed) or live. Steps come in order, one at a time."""
        if not self.job.is_durable:
            raise FrameError(f"step {f.step} of a session that is not durable")
        if self.granted is not None:
            raise FrameError(f"step {f.step} came while step {self.granted.step} was running")
        if f.step != self.next_step:
            raise FrameError(f"step {f.step} out of turn (expected step {self.next_step})")
        grant, self.grant = self.grant, 0  # a go-ahead in advance is for the next step only
        try:
            rec = self.history.replay(f.step, f.kind, f.function, f.where)
        except journal.NonDeterminism as e:
            await self.journal(journal.Print(text=str(e)))
            raise SessionError(str(e)) from None
        self.next_step += 1
        if f.granted and (f.ahead or rec is not None or f.kind != Kind.ACTIVITY or grant != f.step):
            raise FrameError(f"step {f.step} was started on a go-ahead it was not given")
        if f.ahead:  # the worker replayed it from what it was sent: checked, not answered
            if rec is None:
                raise FrameError(f"step {f.step} is not in the journal, yet it was replayed")
            return
        if rec is not None:
            await worker.send(*replayed_reply(rec))
            if isinstance(rec, journal.Sleep):  # (held back from replay_ahead: see there)
                self._asleep_until(f.step, rec.deadline_us)
            return
        self._fault("step", f.step)
        if self.host.faults.rules:  # a test's hold: the worker waits, the job kept, beating
            await self.host.faults.held(
                "step", self.job.entrypoint, self.attempt, f.step, self._stop
            )
        if not self.lease.valid():  # a frozen runner's worker starts nothing new
            raise Fenced(f"it lost its job before step {f.step} ({self.lease.lost_because})")
        if f.kind == Kind.ACTIVITY:
            self.granted = f
            if not f.granted:  # (one that is runs already: it had its go-ahead in advance)
                await worker.send({"type": "step", "go": True})
        elif f.kind == Kind.SLEEP:
            await self._sleep(worker, f)
        elif f.kind in journal.SYSCALLS:
            await self._syscall(worker, f, blob)
        else:
            raise FrameError(f"step {f.step} has an unknown kind {f.kind!r}")

    def _grant(self) -> dict[str, float]:
        """A go-ahead in advance for the next step, to go with a reply that ends a live step:
        if it is an activity, the worker may start it without asking (and sends its step
        ``granted``), before ``go_until`` (``time.monotonic()``). It ends before the lease
        could (``Lease.grant_until``), so a worker whose runner froze or lost its job still
        starts nothing new once the job may be another runner's. None once a stop is asked
        for, or while a fault rule waits at the next step's ``step`` point."""
        step = self.next_step
        if self.stop_reason is not None or self.host.faults.armed(
            "step", self.job.entrypoint, self.attempt, step
        ):
            return {}
        until = self.lease.grant_until(GRANT_MAX)
        if not until:
            return {}
        self.grant = step
        return {"go_until": until}

    async def _activity(self, worker: WorkerProcess, f: ActivityFrame, blob: bytes) -> None:
        granted, self.granted = self.granted, None
        if granted is None or (granted.step, granted.function) != (f.step, f.function):
            raise FrameError(f"activity {f.function!r} of step {f.step} was not asked for")
        if len(blob) > MAX_RESULT + 1024:
            raise SessionError(
                f"error: the outcome of activity {f.function!r} is {len(blob)} bytes, over "
                f"the {MAX_RESULT} byte limit"
            )
        now = time.time_ns()
        ran_ns = (f.t1_ns - f.t0_ns) if f.t0_ns and f.t1_ns else 0
        rec = journal.Activity(
            step=f.step,
            function=f.function,
            ok=f.ok,
            result=blob,
            digest=f.digest,
            error="" if f.ok else f.error,
            duration_us=min(max(ran_ns // 1000, 0), 10**15),
        )
        await self.journal(rec, f.step)  # write-ahead: acked before the worker goes on
        await worker.send({"type": "ack", **self._grant()})
        self._step_span(
            f"activity {f.function}",
            f.t0_ns or now,
            f.t1_ns or now,
            {"ak.activity.function": f.function, "ak.activity.seq": f.step},
            "" if f.ok else (f.error_type or "Exception"),
        )

    async def _sleep(self, worker: WorkerProcess, f: StepFrame) -> None:
        """Journals a durable sleep's deadline, then tells the worker when to wake up."""
        seconds = max(0.0, f.seconds)
        deadline = timefmt.now_us() + int(seconds * 1_000_000)
        await self.journal(
            journal.Sleep(step=f.step, seconds=seconds, deadline_us=deadline), f.step
        )
        # (No go-ahead in advance: a sleep outlasts most, and the session may park in it.)
        await worker.send({"type": "step", "deadline_us": deadline})
        self._asleep_until(f.step, deadline)
        self._step_span(
            "sleep",
            time.time_ns(),
            deadline * 1000,
            {"ak.step": f.step, "ak.sleep.seconds": seconds},
        )

    def _asleep_until(self, step: int, deadline_us: int) -> None:
        """The worker sleeps until ``deadline_us`` (until its next frame, as far as the
        runner knows): a waiting session, which may park."""
        if deadline_us - timefmt.now_us() >= 1_000_000 and not self.asleep:
            self.asleep = True
            self.host.admission.begin(self.lane)
        self._arm(step, "sleep", deadline_us, [])

    async def _syscall(self, worker: WorkerProcess, f: StepFrame, blob: bytes) -> None:
        """A system call of handler code: its outcome is journaled before the worker has it."""
        args = f.args
        if f.kind in (Kind.NEXT_EVENT, Kind.NEXT_SIGNAL):
            args, deadline = self._wait_args(f)
            self._arm(f.step, _wait_reason(f), deadline, _wants(f))
        try:
            reply, rblob, inbox_seq = await self._serve(f.kind, args, blob, f.step)
        finally:
            self._disarm()  # (before anything of its outcome is written)
        rec = journal.Syscall(
            step=f.step,
            function=f.kind,
            args=f.args,
            result=rblob,
            error=reply.get("error", ""),
            inbox_seq=inbox_seq or 0,
        )
        await self.journal(rec, f.step)  # write-ahead: acked before the worker sees it
        await worker.send({**reply, "type": "step", **self._grant()}, rblob)

    async def _plain_syscall(self, worker: WorkerProcess, f: SyscallFrame, blob: bytes) -> None:
        """A system call made inside an activity or by a session that is not durable."""
        reply, rblob, _ = await self._serve(f.name, f.args, blob, None)
        await worker.send(reply, rblob)

    async def _serve(
        self, name: str, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[dict[str, Any], bytes, int | None]:
        reply: dict[str, Any] = {"type": "syscall"}
        pause = 0.5
        key = f"step-{step}" if step is not None else uuid.uuid4().hex  # (every try's)
        with self.tel.span(name, attributes={"ak.step": step or 0}) as span:
            while True:
                try:
                    result, inbox_seq = await self.syscalls.call(name, args, blob, step, key)
                    rblob = pickle.dumps(result) if result is not None else b""
                except SyscallError as e:
                    reply["error"], rblob, inbox_seq = str(e), b"", None
                    tracing.fail(span, "AutoKittehError")
                except Unavailable as e:
                    # The store away (restarting, frozen): not the handler's error, and not
                    # one to journal as its result. The call waits for it (the job held and
                    # heartbeated), as the attempt's start does.
                    if not self.lease.valid():
                        raise Fenced(f"lost its job while the store was away ({e})") from None
                    log.warning("session %s: %s: %s; waiting", self.job.session_id, name, e)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
                    continue
                return reply, rblob, inbox_seq

    def _step_span(
        self, name: str, start_ns: int, end_ns: int, attrs: dict[str, Any], error_type: str = ""
    ) -> None:
        """A span for a step that already happened (its times measured elsewhere)."""
        span = self.tel.start_span(name, attributes={**self.attrs, **attrs}, start_time=start_ns)
        if error_type:
            tracing.fail(span, error_type)
        span.end(end_time=end_ns)  # never before its start (``_Span.end`` sees to it)


# A job younger than this is its session's only one (``SessionRun._may_start``): JetStream's
# duplicate window, less what the NATS server's clock and ours may differ by.
FRESH_JOB = bus.DUPLICATE_WINDOW - 10.0

# The longest go-ahead in advance a worker gets (``SessionRun._grant``): it starts its next
# live activity without a round trip to the runner if it starts it within this.
GRANT_MAX = 1.0

# Bytes of recorded outcomes the start frame carries at most; later recorded steps are
# answered one by one as the worker asks (the frame must stay well under MAX_FRAME).
REPLAY_AHEAD_BYTES = 16 * 1024 * 1024


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Marks the outcome of a task whose waiters may all be gone as seen."""
    if not task.cancelled():
        task.exception()


def replay_ahead(
    history: journal.History, park_after: float = 0.0
) -> dict[int, tuple[str, str, dict[str, Any], bytes]]:
    """The answers to the first recorded steps, for the worker to replay on its own:
    (kind, function, answer, its blob) by step, up to REPLAY_AHEAD_BYTES of blobs.
    ``park_after``: sessions park; a recorded sleep with more than that left is left out,
    so that the worker asks for it and the runner knows it sleeps (and may park it)."""
    out: dict[int, tuple[str, str, dict[str, Any], bytes]] = {}
    size = 0
    later = timefmt.now_us() + int(park_after * 1_000_000) if park_after else 0
    for k in sorted(history.steps):
        rec = history.steps[k]
        if later and isinstance(rec, journal.Sleep) and rec.deadline_us > later:
            continue
        reply, blob = replayed_reply(rec)
        size += len(blob) + 200
        if size > REPLAY_AHEAD_BYTES:
            break
        out[k] = (str(journal.kind_for(rec)), rec.function, reply, blob)
    return out


def replayed_reply(rec: journal.Step) -> tuple[dict[str, Any], bytes]:
    """The reply to a step the journal already has: its recorded outcome."""
    if isinstance(rec, journal.Activity):
        return {"type": "step", "replayed": True, "ok": rec.ok}, rec.result
    if isinstance(rec, journal.Sleep):
        return {"type": "step", "replayed": True, "deadline_us": rec.deadline_us}, b""
    reply: dict[str, Any] = {"type": "step", "replayed": True}
    if rec.error:
        reply["error"] = rec.error
    return reply, rec.result


def _wait_reason(f: StepFrame) -> str:
    """What a live next_event/next_signal waits for, as a `parked` record says it."""
    if f.kind == Kind.NEXT_EVENT:
        return "next_event"
    names = f.args.get("names") or []
    if names and all(isinstance(n, str) and ids.is_id(n, "ses") for n in names):
        return "child"  # the end of a child session
    return "next_signal"


def _wants(f: StepFrame) -> list[str]:
    """What inbox messages a live next_event/next_signal takes (parking.want)."""
    if f.kind == Kind.NEXT_EVENT:
        return [parking.want(wire.INBOX_EVENT, str(s)) for s in f.args.get("subscriptions") or []]
    return [parking.want(wire.INBOX_SIGNAL, str(n)) for n in f.args.get("names") or []]


def parked_entry(
    job: wire.Job, seq: int, rec: journal.Parked, traceparent: str, timeout: float = 0.0
) -> parking.Entry:
    """The AK_PARKED entry of a session parked by its `parked` record ``rec`` at ``seq``;
    ``timeout``: AK_RUNNER__SESSION_TIMEOUT (the session is woken when it runs out, to end
    then as it would have with parking off)."""
    deadline = rec.deadline_us
    if timeout > 0 and rec.clock_us:
        over = rec.clock_us + int(timeout * 1_000_000)
        deadline = min(deadline, over) if deadline else over
    return parking.Entry(
        parked_seq=seq,
        deadline_us=deadline,
        inbox_seq=rec.inbox_seq,
        job=wire.encode(dataclasses.replace(job, parked_seq=0)),
        traceparent=traceparent,
        wants=None if rec.wants is None else tuple(rec.wants),
    )


async def after_end(
    nc: Client,
    keys: Keyring,
    job: wire.Job,
    ended: journal.Ended,
    history: journal.History,
    syscalls: Syscalls | None = None,
) -> None:
    """What follows a session's `ended` record: its parent hears of it (de-duplicated by
    id, so a later attempt may tell it again), a sync webhook's request hears of it and its
    subscriptions go. A redelivered job whose journal already ends does it again: its
    attempt may have stopped in between."""
    if job.is_sync and job.event_id:  # (after any outcome it gave, on the same connection)
        end = {"session_id": job.session_id, "state": ended.state}
        await nc.publish(subjects.ended_subject(job.event_id), wire.pack(end))
    if job.parent_session_id:
        msg = wire.InboxMessage(
            kind=wire.INBOX_CHILD_END,
            name=job.session_id,
            completed=ended.state == wire.COMPLETED,
            payload=ended.result,
        )
        await bus.publisher(nc).publish(
            subjects.inbox_subject(job.parent_session_id),
            wire.encode(seal_payload(keys, msg, job.parent_session_id)),
            headers={subjects.HDR_MSG_ID: f"end:{job.session_id}", **parking.inbox_headers(msg)},
        )
    if not (history.subscribed or (syscalls is not None and syscalls.subscribed)):
        return
    try:
        await bus.store_call(nc, "subscription.delete", {"session_id": job.session_id})
    except Exception as e:  # best effort: the store removes an ended session's anyway
        if not (isinstance(e, AKError) or may_pass(e)):
            raise
        log.warning("session %s: subscriptions not removed: %s", job.session_id, e)
