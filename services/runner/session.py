"""Runs one session: journal its steps, start the worker, relay its frames, record the end."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from akcore import bus, subjects, timefmt, tracing, wire
from akcore.cache import StoreCache
from akcore.config import REQUIREMENTS_FILE
from akcore.errors import AKError, Unavailable
from akcore.journal import ACTIVITY, SLEEP, ReplayState
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, Span, SpanKind

from .builds import unpack_build
from .inbox import Inbox, InboxWatch
from .pyenv import EnvError, PythonEnvs
from .syscalls import SyscallError, Syscalls
from .worker import WorkerPool, WorkerProcess

log = logging.getLogger(__name__)


def print_data(header: dict[str, Any]) -> dict[str, Any]:
    """A print record: its text (one trailing newline trimmed) and where it was printed."""
    data: dict[str, Any] = {"text": str(header.get("text", "")).removesuffix("\n")}
    if header.get("activity"):
        data["activity"] = True
    elif header.get("n"):
        data["n"] = int(header["n"])
    return data


def activity_data(header: dict[str, Any], blob: bytes) -> dict[str, Any]:
    """An activity record: step, short function name, argument digest, outcome (opaque)."""
    data = {
        "step": int(header["step"]),
        "function": str(header.get("function", "")),
        "digest": str(header.get("digest", "")),
        "ok": bool(header.get("ok")),
        "result": blob,
    }
    if not data["ok"]:
        data["error"] = str(header.get("error", ""))
    return data


class Admission:
    """How many of a runner's live sessions are waiting (a durable sleep of a second or
    more, ``next_event``, ``next_signal``): those hold a worker process but no CPU, so
    they do not count against the sessions a runner runs at once."""

    def __init__(self) -> None:
        self.waiting = 0
        self.changed = asyncio.Event()

    def begin(self) -> None:
        self.waiting += 1
        self.changed.set()

    def end(self) -> None:
        self.waiting -= 1
        self.changed.set()

    @contextmanager
    def wait(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()


@dataclass(frozen=True)
class Host:
    """What a runner shares with all its sessions."""

    nc: Client
    cache: Path  # unpacked builds
    envs: PythonEnvs
    pool: WorkerPool
    tel: tracing.Telemetry
    runner_id: str
    env_cache: StoreCache  # each project's vars (`session.env`)
    inboxes: InboxWatch  # the inboxes of the sessions running here
    js: JetStreamContext
    worker_env: dict[str, str]  # ours minus the system's own settings (see worker_env)
    # Each build's directory and requirements.txt, once unpacked (builds never change).
    builds: dict[str, tuple[Path, bytes | None]] = field(default_factory=dict)
    admission: Admission = field(default_factory=Admission)

    def spawn_env(self, extra_env: dict[str, str]) -> dict[str, str]:
        """A worker's environment: the runner's (minus the system's settings) and what its
        interpreter needs (``extra_env``, its PYTHONPATH put first; updated in place). A
        session's own variables go in its start frame, on top."""
        base = dict(self.worker_env)
        if extra_env.get("PYTHONPATH") and base.get("PYTHONPATH"):
            extra_env["PYTHONPATH"] += os.pathsep + base["PYTHONPATH"]
        base.update(extra_env)
        return base


class SessionRun:
    """One attempt at one session; ``replay`` is what earlier attempts journaled."""

    def __init__(
        self,
        host: Host,
        job: wire.Job,
        attempt: int,
        replay: ReplayState,
        queued_at: float = 0.0,  # when its job was published (NATS server time), if known
    ) -> None:
        self.queued_at = queued_at
        self.host, self.nc, self.cache, self.job = host, host.nc, host.cache, job
        self.envs, self.pool, self.tel = host.envs, host.pool, host.tel
        self.env: dict[str, str] = {}
        self.python_env = ""
        self.span: Span = NonRecordingSpan(INVALID_SPAN_CONTEXT)  # until traced() starts it
        self.attrs = {
            "ak.session_id": job.session_id,
            "ak.project": job.project_id,
            "ak.deployment_id": job.deployment_id,
        }
        self.attempt, self.replay, self.runner_id = attempt, replay, host.runner_id
        self.seq = replay.next_seq
        self.js = host.js
        self.pub = bus.publisher(host.nc)
        self.ended = False
        self.stop_reason: str | None = None
        self._stop = asyncio.Event()
        self.inbox = Inbox(
            self.js, job.session_id, replay.consumed, self._request_stop, host.admission.wait
        )
        self.asleep = False  # in a durable sleep that counts as waiting (see Admission)
        self.syscalls = Syscalls(self.nc, job, self.inbox, self.js)

    async def journal(self, kind: str, data: dict[str, Any]) -> None:
        """Appends a record; returns once JetStream has acknowledged it (write-ahead).

        The sequence number is taken before publishing: a stop can cancel this while the
        publish is in flight (and already stored), and the next record (``ended``) must not
        reuse the number, or JetStream would drop it as a duplicate of this one."""
        sid, seq = self.job.session_id, self.seq
        self.seq += 1
        rec = wire.JournalRecord(
            session_id=sid, seq=seq, kind=kind, t_us=timefmt.now_us(), data=data
        )
        await self.pub.publish(
            subjects.journal_subject(sid),
            wire.encode(rec),
            headers={subjects.HDR_MSG_ID: f"{sid}:{seq}"},
        )

    async def traced(self, parent: Context) -> None:
        """Runs the session inside its span (a child of whatever started it)."""
        job = self.job
        ctx = tracing.with_session(parent, job.session_id, job.project_id, job.deployment_id)
        attrs = {**self.attrs, "ak.entrypoint": job.entrypoint, "ak.attempt": self.attempt}
        name = f"session {job.entrypoint}"
        with self.tel.span(name, parent=ctx, kind=SpanKind.CONSUMER, attributes=attrs) as span:
            self.span = span
            if self.attempt > 1:
                span.add_event(
                    "replay",
                    {"ak.attempt": self.attempt, "ak.replayed_steps": len(self.replay.steps)},
                )
            await self.run()

    def _step_span(
        self, name: str, start_ns: int, end_ns: int, attrs: dict[str, Any], error_type: str = ""
    ) -> None:
        """A span for a step that already happened (its times measured elsewhere)."""
        span = self.tel.start_span(name, attributes={**self.attrs, **attrs}, start_time=start_ns)
        if error_type:
            tracing.fail(span, error_type)
        span.end(end_time=end_ns)  # never before its start (``_Span.end`` sees to it)

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
        await self.journal(
            wire.ENDED, {"state": state, "error": error, "traceback": traceback, "result": result}
        )
        self.ended = True
        log.info("session %s: %s %s", self.job.session_id, state, error)
        await self._after_end(state, result)

    async def _after_end(self, state: str, result: bytes | None) -> None:
        """Drops the session's subscriptions and tells a parent session that its child ended."""
        job = self.job
        try:
            if self.replay.subscribed or self.syscalls.subscribed:
                args = {"session_id": job.session_id}
                await bus.store_call(self.nc, "subscription.delete", args)
        except AKError as e:
            log.warning("session %s: subscriptions not removed: %s", job.session_id, e)
        if job.parent_session_id:
            msg = wire.InboxMessage(
                kind=wire.INBOX_CHILD_END,
                name=job.session_id,
                completed=state == wire.COMPLETED,
                payload=result,
            )
            await self.pub.publish(
                subjects.inbox_subject(job.parent_session_id),
                wire.encode(msg),
                headers={subjects.HDR_MSG_ID: f"end:{job.session_id}"},
            )

    async def _code(self) -> tuple[Path, bytes | None]:
        """The build's directory (fetched and unpacked once per runner: builds never change)
        and its requirements.txt, if any."""
        known = self.host.builds.get(self.job.build_id)
        if known is not None:
            return known
        code_dir = self.cache / self.job.build_id
        if not code_dir.is_dir():  # unpacked atomically, so a directory is a whole build
            build = await bus.store_call(self.nc, "build.get", {"build_id": self.job.build_id})
            code_dir = unpack_build(self.cache, self.job.build_id, build["files"])
        req = code_dir / REQUIREMENTS_FILE
        known = self.host.builds[self.job.build_id] = (
            code_dir,
            req.read_bytes() if req.is_file() else None,
        )
        return known

    async def run(self) -> None:
        job = self.job
        started: dict[str, Any] = {"runner": self.runner_id, "attempt": self.attempt}
        if self.attempt > 1:
            started["replayed_steps"] = len(self.replay.steps)
            started["read_us"] = self.replay.read_us
        try:
            code_dir, requirements = await self._code()
            variables = await self.host.env_cache.call(
                self.nc, "session.env", {"project_id": job.project_id}, job.project_id
            )
        except Unavailable:
            raise  # the store is away for now: the job goes back to the queue, nothing is lost
        except (AKError, OSError, ValueError) as e:
            await self.journal(wire.STARTED, started)
            await self.end(wire.ERROR, f"error: could not prepare the session's code: {e}")
            return
        await self.journal(wire.STARTED, started)
        try:
            python, extra_env, self.python_env = await self.envs.python_for(requirements)
        except EnvError as e:
            await self.end(wire.ERROR, f"error: the session's Python environment: {e.message}")
            return
        base = self.host.spawn_env(extra_env)
        self.env = {**variables, **extra_env}
        try:
            worker = await self.pool.take(python, base, job.project_id)
        except OSError as e:
            await self.end(
                wire.ERROR,
                f"error: could not start the worker Python {python!r}: {e}",
                "set AK_WORKER_PYTHON to a Python 3.11+ interpreter",
            )
            return
        worker.reusable = False  # until its session ends with a `done` that says so
        watch = self.host.inboxes
        live = watch.live
        live[job.session_id] = self.inbox
        try:
            fresh = self.attempt == 1 and watch.heard_all_since(self.queued_at)
            if not fresh or watch.heard_of(job.session_id):
                await self.inbox.open()  # something may be waiting: look
            await self._run_until_stopped(worker, code_dir)
        finally:
            self._awake()
            if live.get(job.session_id) is self.inbox:
                del live[job.session_id]
            await self.inbox.close()
            await self.pool.give_back(worker, python, base, job.project_id)

    def _awake(self) -> None:
        if self.asleep:
            self.asleep = False
            self.host.admission.end()

    def _request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason or "stopped"
            self._stop.set()

    async def _run_until_stopped(self, worker: WorkerProcess, code_dir: Path) -> None:
        """Runs the conversation; a stop request kills the worker wherever the handler is."""
        talk = asyncio.create_task(self._converse(worker, code_dir))
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({talk, stop}, return_when=asyncio.FIRST_COMPLETED)
        if talk.done():
            stop.cancel()
            talk.result()
            return
        talk.cancel()
        await asyncio.gather(talk, return_exceptions=True)
        if worker.proc.returncode is None:
            worker.proc.kill()
        if not self.ended:
            await self.end(wire.STOPPED, self.stop_reason or "stopped")

    async def _syscall(self, worker: WorkerProcess, header: dict[str, Any], blob: bytes) -> None:
        """Serves one system call; in handler code its outcome is journaled first."""
        name, step = str(header.get("name", "")), header.get("step")
        args = header.get("args") or {}
        reply: dict[str, Any] = {"type": "syscall"}
        with self.tel.span(name, attributes={"ak.step": int(step or 0)}) as span:
            try:
                result, inbox_seq = await self.syscalls.call(name, args, blob, step)
                rblob = pickle.dumps(result) if result is not None else b""
            except SyscallError as e:
                reply["error"], rblob, inbox_seq = str(e), b"", None
                tracing.fail(span, "AutoKittehError")
        if step:
            data: dict[str, Any] = {
                "step": int(step),
                "function": name,
                "args": args,
                "result": rblob,
            }
            if "error" in reply:
                data["error"] = reply["error"]
            if inbox_seq:
                data["inbox_seq"] = inbox_seq
            await self.journal(name, data)  # write-ahead: acked before the worker sees it
        await worker.send(reply, rblob)

    async def _sleep(self, worker: WorkerProcess, header: dict[str, Any]) -> None:
        """Journals a durable sleep's deadline, then tells the worker when to wake up."""
        seconds = max(0.0, float(header.get("seconds", 0)))
        deadline = timefmt.now_us() + int(seconds * 1_000_000)
        data = {
            "step": int(header["step"]),
            "function": "sleep",
            "seconds": seconds,
            "deadline_us": deadline,
        }
        await self.journal(SLEEP, data)
        await worker.send({"type": "sleep", "deadline_us": deadline})
        if seconds >= 1 and not self.asleep:  # until the worker's next frame
            self.asleep = True
            self.host.admission.begin()
        self._step_span(
            "sleep",
            time.time_ns(),
            deadline * 1000,
            {"ak.step": int(header["step"]), "ak.sleep.seconds": seconds},
        )

    async def _converse(self, worker: WorkerProcess, code_dir: Path) -> None:
        job = self.job
        init = {
            "data": job.data,
            "event_type": job.event_type,
            "event_id": job.event_id,
            "replay": self.replay.for_worker(),
        }
        await worker.send(
            {
                "type": "start",
                "code_dir": str(code_dir),
                "entrypoint": job.entrypoint,
                "session_id": job.session_id,
                "is_durable": job.is_durable,
                "python_env": self.python_env,
                "env": self.env,
            },
            pickle.dumps(init),
        )
        async for header, blob in worker.frames():
            self._awake()
            kind = header.get("type")
            if kind == "print":
                await self.journal(wire.PRINT, print_data(header))
            elif kind == ACTIVITY:
                await self.journal(ACTIVITY, activity_data(header, blob))
                await worker.send({"type": "ack"})
                now = time.time_ns()
                function = str(header.get("function", ""))
                self._step_span(
                    f"activity {function}",
                    int(header.get("t0_ns") or now),
                    int(header.get("t1_ns") or now),
                    {"ak.activity.function": function, "ak.activity.seq": int(header["step"])},
                    "" if header.get("ok") else str(header.get("error_type") or "Exception"),
                )
            elif kind == SLEEP:
                await self._sleep(worker, header)
            elif kind == "syscall":
                await self._syscall(worker, header, blob)
            elif kind == "done":
                worker.reusable = bool(header.get("reusable"))
                if header.get("ok"):
                    await self.end(wire.COMPLETED, result=blob or None)
                else:
                    await self.end(
                        wire.ERROR,
                        header.get("error", "error"),
                        header.get("traceback", ""),
                        error_type=str(header.get("error_type", "")),
                    )
                return
            else:
                log.warning("session %s: unknown worker frame %r", job.session_id, kind)
        code = await worker.close()
        tail = "".join(worker.stderr_tail).strip()
        await self.end(
            wire.ERROR,
            f"error: worker process exited with code {code} before the handler finished",
            tail,
        )
