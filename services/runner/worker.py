"""One worker subprocess and its framed pipes, seen from the runner."""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from autokitteh._channel import HEADER_SIZE, decode_header, encode_frame, split_sizes

STDERR_TAIL = 20


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
