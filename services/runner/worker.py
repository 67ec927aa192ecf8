"""One worker subprocess and its framed pipes, seen from the runner."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from autokitteh._channel import HEADER_SIZE, decode_header, encode_frame, split_sizes

STDERR_TAIL = 20
log = logging.getLogger(__name__)


class WorkerProcess:
    """Starts ``python -m autokitteh._worker`` with two private pipes for frames."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proc, self._reader, self._writer = proc, reader, writer
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.sessions = 0  # sessions it has run
        self.reusable = False  # its last session ended cleanly and it can take another
        self.idle_since = 0.0
        self._stderr_task = asyncio.create_task(self._forward_stderr())

    @classmethod
    async def spawn(cls, python: str, code_dir: Path, env: dict[str, str]) -> WorkerProcess:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                python,
                "-u",
                "-m",
                "autokitteh._worker",
                str(to_child_r),
                str(from_child_w),
                pass_fds=(to_child_r, from_child_w),
                cwd=code_dir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**26)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_child_r, "rb", buffering=0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(to_child_w, "wb", buffering=0)
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        return cls(proc, reader, writer)

    async def _forward_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            text = line.decode(errors="replace")
            self.stderr_tail.append(text)
            sys.stderr.write(text)

    async def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        self._writer.write(encode_frame(header, blob))
        await self._writer.drain()

    async def frames(self) -> AsyncIterator[tuple[dict[str, Any], bytes]]:
        """Frames from the worker until it closes its end."""
        while True:
            try:
                prefix = await self._reader.readexactly(HEADER_SIZE)
                hlen, blen = split_sizes(prefix)
                head = await self._reader.readexactly(hlen)
                blob = await self._reader.readexactly(blen) if blen else b""
            except asyncio.IncompleteReadError:
                return
            yield decode_header(head), blob

    async def close(self) -> int:
        """Stops the worker (if still running) and returns its exit code."""
        self._writer.close()
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=2)
            except TimeoutError:
                self.proc.kill()
        code = await self.proc.wait()
        await asyncio.gather(self._stderr_task, return_exceptions=True)
        return code


PoolKey = tuple[str, frozenset[tuple[str, str]]]


def pool_key(python: str, env: dict[str, str]) -> PoolKey:
    """Workers are interchangeable when started by the same interpreter and environment."""
    return python, frozenset(env.items())


class WorkerPool:
    """Worker processes ready for a session, so that a session does not wait for an
    interpreter to start and import the SDK.

    Two kinds are kept per interpreter and spawn environment (a venv, or AK_WORKER_PYTHON):
    ``size`` spares that never ran a session, and workers that finished a session of a
    project and wait for the next session of the same project (up to ``reuse`` sessions per
    process; 1 means every session gets a fresh process). A worker only ever runs one
    session at a time, and never sessions of two projects."""

    IDLE_SECONDS = 60.0  # a finished worker not used again within this is stopped

    def __init__(self, size: int, cwd: Path, reuse: int = 1) -> None:
        self.size, self.cwd, self.reuse = size, cwd, max(1, reuse)
        self._idle: dict[PoolKey, list[WorkerProcess]] = {}
        self._done: dict[tuple[PoolKey, str], list[WorkerProcess]] = {}
        self._filling: set[asyncio.Task[None]] = set()

    async def take(self, python: str, env: dict[str, str], project: str = "") -> WorkerProcess:
        key = pool_key(python, env)
        worker = await self._pop_live(self._done.get((key, project), []))
        if worker is not None:
            return worker
        idle = self._idle.setdefault(key, [])
        worker = await self._pop_live(idle)
        if worker is None:
            worker = await WorkerProcess.spawn(python, self.cwd, env)
        if self.size and not self._filling:  # one refill at a time
            self._refill(key, python, env)
        return worker

    async def warm(self, python: str, env: dict[str, str]) -> None:
        """Starts the spares for ``python`` and ``env`` now, before any session asks."""
        await self._refill(pool_key(python, env), python, env)

    def _refill(self, key: PoolKey, python: str, env: dict[str, str]) -> asyncio.Task[None]:
        task = asyncio.create_task(self._fill(key, python, env))
        self._filling.add(task)
        task.add_done_callback(self._filling.discard)
        return task

    async def _pop_live(self, workers: list[WorkerProcess]) -> WorkerProcess | None:
        """Takes the last live worker of the list (closing dead ones); the rest stay in it."""
        while workers:
            candidate = workers.pop()
            if candidate.proc.returncode is None:
                return candidate
            await candidate.close()
        return None

    async def give_back(
        self, worker: WorkerProcess, python: str, env: dict[str, str], project: str
    ) -> None:
        """A worker whose session ended: kept for the project's next session if it may run
        another, else stopped."""
        worker.sessions += 1
        if (
            worker.sessions >= self.reuse
            or not worker.reusable
            or worker.proc.returncode is not None
        ):
            await worker.close()
            return
        key = pool_key(python, env)
        worker.stderr_tail.clear()
        worker.idle_since = asyncio.get_running_loop().time()
        self._done.setdefault((key, project), []).append(worker)

    async def reap(self) -> None:
        """Stops finished workers that waited longer than ``IDLE_SECONDS`` for a session."""
        cutoff = asyncio.get_running_loop().time() - self.IDLE_SECONDS
        for k, workers in list(self._done.items()):
            stale = [w for w in workers if w.idle_since < cutoff or w.proc.returncode is not None]
            workers[:] = [w for w in workers if w not in stale]
            if not workers:
                self._done.pop(k, None)
            for w in stale:
                await w.close()

    async def _fill(self, key: PoolKey, python: str, env: dict[str, str]) -> None:
        idle = self._idle.setdefault(key, [])
        while len(idle) < self.size:
            try:
                idle.append(await WorkerProcess.spawn(python, self.cwd, env))
            except OSError as e:
                log.warning("cannot start a spare worker (%s): %s", python, e)
                return

    async def close(self) -> None:
        for task in self._filling:
            task.cancel()
        for idle in self._idle.values():
            for w in idle:
                await w.close()
        for done in self._done.values():
            for w in done:
                await w.close()
        self._idle.clear()
        self._done.clear()
