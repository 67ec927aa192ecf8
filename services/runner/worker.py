"""One worker subprocess and its framed pipes, seen from the runner."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from autokitteh import _values
from autokitteh._channel import HEADER_SIZE, MAX_FRAME, decode_header, encode_frame, split_sizes
from autokitteh._frames import MAX_PRINT, FrameError
from autokitteh._runtime import MAX_PAYLOAD

from .sandbox import UserIds, WorkerLimits, has_children, has_strangers, kill_user, open_way_to

# What the runner keeps of a worker's stderr, for the error of a session whose worker died:
# its last STDERR_TAIL lines, each cut to its first STDERR_LINE bytes (with a note of its
# length). The pipe is read STDERR_READ bytes at a time, and never stops being read: a
# worker writing more, or a longer line, than the runner keeps must not block on it.
STDERR_TAIL = 20
STDERR_LINE = 4096
STDERR_READ = 1 << 16
EXIT_UNKNOWN = 255  # a forked worker whose fork server ended before reporting its exit
log = logging.getLogger(__name__)


# How a root runner starts a fork server or a worker: the interpreter isolated (``-I -S``:
# no environment variables, no site-packages, no ``.pth`` files), with the runner's own
# root-owned copy of the SDK on the path (argv[1], taken off). Nothing of the environment
# runs as root: its packages are opened by the worker once it is its user.
_ISOLATED = (
    "import runpy, sys; sys.path.append(sys.argv.pop(1)); "
    "runpy.run_module({!r}, run_name='__main__', alter_sys=True)"
)


async def _run_module(
    python: str,
    module: str,
    fds: list[int],
    cwd: Path,
    env: dict[str, str],
    sdk: str = "",
    args: list[int | str] | None = None,
    **kw: Any,
) -> asyncio.subprocess.Process:
    """``python -u -m module FD... ARG...``, the descriptors passed on to it (``sdk``:
    isolated, the SDK from that directory)."""
    start = ("-I", "-S", "-c", _ISOLATED.format(module), sdk) if sdk else ("-m", module)
    return await asyncio.create_subprocess_exec(
        python,
        "-u",
        *start,
        *map(str, [*fds, *(args or [])]),
        pass_fds=fds,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        **kw,
    )


# The runner's ends of a worker's pipes are file objects from the moment they exist, and
# are only ever closed through them (closing twice is then harmless): a descriptor closed
# twice by number closes whatever reused that number meanwhile (another worker's pipe, a
# socket, the event loop's epoll), which under many workers starting and ending at once
# crashed runners.


def _pipe(parent_reads: bool) -> tuple[int, BinaryIO]:
    """A pipe: the child's end (a raw descriptor, passed on and then closed once) and the
    runner's end (a file object)."""
    r, w = os.pipe()
    if parent_reads:
        return w, os.fdopen(r, "rb", buffering=0)
    return r, os.fdopen(w, "wb", buffering=0)


class _LoopEnd:
    """A pipe end as uvloop is given it: a descriptor of its own (a duplicate), which libuv
    closes itself as the transport closes; uvloop then closes the file object it was given
    too, and a real one would close the same number a second time. Between the two, a
    thread of the runner (clearing a worker user, taking a user id's lock) may have opened
    a file and got that number: its descriptor went instead (seen as 'Bad file descriptor'
    on /tmp, /proc, lock files and pidfds, and runners aborting under worker churn)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Nothing: libuv has closed the descriptor already (and owns it until then)."""


def _for_loop(loop: asyncio.AbstractEventLoop, pipe: BinaryIO) -> tuple[Any, BinaryIO | None]:
    """What to hand the loop for ``pipe``, and what of ours to close once it has it.
    asyncio's own loop closes the file object it is given (once): ``pipe`` itself. uvloop
    closes the descriptor itself: it gets a duplicate, and ``pipe`` is ours to close."""
    if type(loop).__module__.startswith("uvloop"):
        return _LoopEnd(os.dup(pipe.fileno())), pipe
    return pipe, None


async def _connect(pipe: BinaryIO, connect: Any, factory: Any) -> tuple[Any, Any]:
    """``connect(factory, pipe)`` (the loop's connect_read_pipe or connect_write_pipe); on
    failure ``pipe`` is closed (a duplicate uvloop may have taken is left to it)."""
    given, ours = _for_loop(asyncio.get_running_loop(), pipe)
    try:
        return await connect(factory, given)  # type: ignore[no-any-return]
    except BaseException:
        pipe.close()
        raise
    finally:
        if ours is not None:
            ours.close()


async def _read_stream(
    pipe: BinaryIO, limit: int = 2**26
) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """A stream over the pipe, and its transport (closing it is how to let go of the pipe:
    the loop stops watching the descriptor before it is closed). The stream holds up to
    twice ``limit`` bytes not yet read before the pipe is no longer read."""
    reader = asyncio.StreamReader(limit=limit)
    loop = asyncio.get_running_loop()
    transport, _ = await _connect(
        pipe, loop.connect_read_pipe, lambda: asyncio.StreamReaderProtocol(reader)
    )
    return reader, transport


async def _frame_streams(
    from_child: BinaryIO, to_child: BinaryIO
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    try:
        reader, reading = await _read_stream(from_child)
    except BaseException:
        to_child.close()
        raise
    try:
        transport, protocol = await _connect(
            to_child, loop.connect_write_pipe, asyncio.streams.FlowControlMixin
        )
    except BaseException:
        reading.close()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


class ForkServer:
    """A ``python -m autokitteh._zygote`` process that forks workers on request: a worker
    then starts in about a millisecond, and the interpreter's and the SDK's memory stays
    shared between the workers (copy on write). Linux only (``os.pidfd_open``)."""

    SUPPORTED = hasattr(os, "pidfd_open") and hasattr(socket, "SOCK_SEQPACKET")

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.proc, self._sock = proc, sock
        self._forks: collections.deque[asyncio.Future[int]] = collections.deque()
        self._procs: dict[int, ForkedProcess] = {}
        self._codes: dict[int, int] = {}  # exits reported before their process was known
        self._unwatched: set[int] = set()  # forked, not yet watched: their exits are kept
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        python: str,
        cwd: Path,
        env: dict[str, str],
        sdk: str = "",
        limits: WorkerLimits | None = None,
    ) -> ForkServer:
        """``sdk``: it runs as root and forks sandboxed workers, so it starts isolated with
        the SDK from there, and runs no code of the environment's packages itself; each
        worker takes ``limits`` before it does."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fds = [theirs.fileno()]
            box = _box(env, limits) if sdk else []
            proc = await _run_module(python, "autokitteh._zygote", fds, cwd, env, sdk, box)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(proc, ours)

    @property
    def alive(self) -> bool:
        return not self._reading.done()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(self._sock, 256):
                kind, rest = data[:1], data[1:].decode()
                if kind == b"P" and self._forks:
                    asked = self._forks.popleft()
                    if asked.done():  # its asker gave up (cancelled): no one will run it
                        _kill_forked(int(rest))
                    else:
                        self._unwatched.add(int(rest))
                        asked.set_result(int(rest))
                elif kind == b"X":
                    pid, code = (int(x) for x in rest.split())
                    proc = self._procs.pop(pid, None)
                    if proc is not None:
                        proc.reported(code)
                    elif pid in self._unwatched:
                        self._codes[pid] = code
                    # else not a worker of ours (a handler's process made the server's
                    # child, or an abandoned fork): nothing waits for it, nothing is kept
        except OSError as e:
            log.warning("fork server: %s", e)
        finally:
            while self._forks:
                asked = self._forks.popleft()
                if not asked.done():
                    asked.set_exception(ConnectionError("the fork server exited"))

    async def fork(self, cwd: Path, fds: list[int], uid: int = -1) -> int:
        """Forks a worker with these descriptors (frames in, frames out, stderr), running as
        ``uid`` (-1: as the server)."""
        if not self.alive:
            raise ConnectionError("the fork server exited")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._forks.append(done)  # replies come in the order of the requests
        try:
            socket.send_fds(self._sock, [b"F" + os.fsencode(f"{uid} {cwd}")], fds)
        except OSError:
            self._forks.remove(done)
            raise
        return await done

    def forks(self) -> set[int]:
        """The workers it forked that have not been reported ended (its children, as far
        as it knows)."""
        return {*self._procs, *self._unwatched, *self._codes}

    def watch(self, proc: ForkedProcess) -> None:
        self._unwatched.discard(proc.pid)
        code = self._codes.pop(proc.pid, None)
        if code is None:
            self._procs[proc.pid] = proc
        else:
            proc.reported(code)

    async def close(self) -> None:
        """Stops the server (its workers go on until their runner lets them go)."""
        self._reading.cancel()
        await asyncio.gather(self._reading, return_exceptions=True)
        self._sock.close()  # the server exits when it sees the socket closed
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=2)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def _may_have_left_some(worker: WorkerProcess) -> bool:
    """Whether a worker's session may have left a process running. Where a control group
    holds the worker's user id, whether the worker is not alone in it (one read); else:
    the worker has children, or (a forked worker) the fork server has a child it did not
    fork, which a handler's ``clone(CLONE_PARENT)`` makes. (A worker started as a process
    of its own has the runner as its parent: such a sibling is not looked for without a
    group; see docs/security.md.)"""
    proc = worker.proc
    groups = worker.users.groups if worker.users is not None else None
    if groups is not None and (inside := groups.processes(worker.uid)) is not None:
        return inside != [proc.pid]
    if has_children(proc.pid):
        return True
    return isinstance(proc, ForkedProcess) and has_strangers(proc.pid, proc.server.forks())


class ForkedProcess:
    """A worker forked by a ``ForkServer``, with what the runner uses of asyncio's
    ``Process``. Its end is seen through a pidfd (also when the fork server is gone); the
    fork server, its parent, reports its exit code."""

    def __init__(self, pid: int, stderr: asyncio.StreamReader, server: ForkServer) -> None:
        self.pid, self.stderr, self.server = pid, stderr, server
        self.returncode: int | None = None
        self._code: int | None = None
        self._reported = asyncio.Event()
        self._exited = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone (and reaped)
            self._pidfd = -1
            self._settling = self._loop.create_task(self._settle())
        else:
            self._loop.add_reader(self._pidfd, self._on_exit)
        server.watch(self)

    def reported(self, code: int) -> None:
        self._code = code
        self._reported.set()

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        self._settling = self._loop.create_task(self._settle())

    async def _settle(self) -> None:
        try:  # the fork server reaps it and reports its code right after
            await asyncio.wait_for(self._reported.wait(), timeout=1.0)
        except TimeoutError:
            pass
        self.returncode = self._code if self._code is not None else EXIT_UNKNOWN
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self._exited.set()

    def kill(self) -> None:
        """Kills the worker and every process it started (its process group)."""
        if self._pidfd >= 0:  # a pidfd never names another process, even if the pid is reused
            _kill_group(self.pid)  # (its group: the worker, alive and unreaped, leads it)
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


def _box(env: dict[str, str], limits: WorkerLimits | None) -> list[int | str]:
    """What a sandboxed worker is told as it starts: the virtual environment its packages
    come from, as ``activate`` names it (``-``: the interpreter's own), its limits, the
    directory it does not see, where its control groups are (``-``: none), the open files
    each of its processes may have (0: as the runner's) and the temporary directories it
    gets of its own (``-``: none)."""
    limits = limits or WorkerLimits()
    venv, hidden, groups = env.get("VIRTUAL_ENV") or "-", limits.hidden or "-", limits.groups or "-"
    temp = limits.temp or "-"
    return [venv, limits.memory_mb, limits.processes, hidden, groups, limits.files, temp]


def _kill_forked(pid: int) -> None:
    """Kills a worker just forked for a request its asker gave up on (through a pidfd: the
    pid of one already gone is never signalled)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        _kill_group(pid)
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# The largest blob a worker's message of each type carries (the SDK's own limits, with
# room): one announcing more is refused before the runner reads it, so that a handler
# writing to its pipe itself cannot make the runner hold MAX_FRAME (64 MiB) per worker.
SMALL_HEADER = 8 * 1024  # parsed on the event loop; larger ones on a thread
SMALL_BLOB = 64 * 1024
PRINT_BLOB = 4 * MAX_PRINT + SMALL_BLOB  # (UTF-8: up to 4 bytes a character)
RESULT_BLOB = MAX_PAYLOAD + SMALL_BLOB  # an activity's result or error, pickled
VALUE_BLOB = _values.MAX_SIZE + SMALL_BLOB  # a return value, a signal's payload


def blob_limit(header: dict[str, Any]) -> int:
    kind = header.get("type")
    if kind == "print":
        return PRINT_BLOB
    if kind == "activity":
        return RESULT_BLOB
    signal = (kind == "step" and header.get("kind") == "signal") or (
        kind == "syscall" and header.get("name") == "signal"
    )  # (a signal's payload: the one system call that carries a blob)
    if kind == "done" or signal:
        return VALUE_BLOB
    return SMALL_BLOB  # (a wait among them: nothing big is held while it waits)


def _checked(head: bytes, blen: int) -> dict[str, Any]:
    """A frame's header, if its blob of ``blen`` bytes is within its type's limit."""
    header = decode_header(head)
    if blen > (limit := blob_limit(header)):
        raise ValueError(
            f"a {str(header['type'])[:40]!r} message of {blen} bytes, over its {limit} limit"
        )
    return header


class ByteBudget:
    """Bytes of all its workers' large messages the runner reads and handles at once: a
    worker whose message does not fit waits (and, no longer read, blocks on its pipe) until
    others are handled. Taken in the order asked, but one owner (a project) holds at most
    a quarter of it: its messages wait while others' go (so that one project's workers,
    sending slowly, cannot keep every project's large messages waiting). One asking more
    than an owner may hold takes that much."""

    def __init__(self, total: int) -> None:
        self.total = self.free = total
        self.share = max(1, total // 4)
        self._held: dict[str, int] = {}  # by owner
        self._waiting: collections.deque[tuple[int, str, asyncio.Future[None]]] = (
            collections.deque()
        )

    async def take(self, n: int, owner: str = "") -> int:
        """Takes ``n`` bytes for ``owner`` (waiting for them); returns what to give back."""
        n = min(n, self.share)
        if n <= 0:
            return 0
        if not self._waiting and self._fits(n, owner):
            self._grant(n, owner)
            return n
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((n, owner, waiter))
        self._pump()  # (the ones before it may wait for their owners' shares alone)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give(n, owner)  # granted as it was cancelled
            else:
                self._waiting.remove((n, owner, waiter))
                self._pump()  # the ones behind it may fit now
            raise
        return n

    def _fits(self, n: int, owner: str) -> bool:
        return n <= self.free and self._held.get(owner, 0) + n <= self.share

    def _grant(self, n: int, owner: str) -> None:
        self.free -= n
        self._held[owner] = self._held.get(owner, 0) + n

    def give(self, n: int, owner: str = "") -> None:
        self.free += n
        left = self._held.get(owner, 0) - n
        if left > 0:
            self._held[owner] = left
        else:
            self._held.pop(owner, None)
        self._pump()

    def _pump(self) -> None:
        """Grants the waiting ones that fit, in order."""
        for item in list(self._waiting):
            need, who, waiter = item
            if waiter.done():
                self._waiting.remove(item)
            elif self._fits(need, who):
                self._waiting.remove(item)
                self._grant(need, who)
                waiter.set_result(None)
            elif need > self.free:
                break  # (in order: a large one is not passed by ever smaller ones)
            # else: its owner holds its share; the next owner's may go


READING_BYTES = 256 * 1024 * 1024
READING = ByteBudget(READING_BYTES)
# Seconds a worker has to send the rest of a large message once its turn came: it writes a
# message at once, and one sending slowly would hold its share of the budget.
LARGE_SEND_SECONDS = 10.0


class WorkerProcess:
    """A ``python -m autokitteh._worker`` process (started, or forked by a fork server)
    with two private pipes for frames. It leads a process group of its own, so that what
    a handler starts dies with it; a sandboxed one runs as a user id of its own, and what
    still runs as that user when it is closed is killed too (``sandbox``).

    What it writes to stdout and stderr is kept (its last lines, each cut at STDERR_LINE
    bytes, for when it dies) and written to the runner's stderr only with ``echo``
    (AK_RUNNER__ECHO_PRINTS), cut the same way."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process | ForkedProcess,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        uid: int = -1,
    ) -> None:
        self.proc, self._reader, self._writer, self.uid = proc, reader, writer, uid
        self._unread = bytearray()  # read from the pipe, not yet taken as frames (``frames``)
        self.users: UserIds | None = None  # where ``uid`` goes back when it is closed
        self.echo = False
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._line = bytearray()  # the stderr line being read: its first STDERR_LINE bytes
        self._line_length = 0  # and its length so far
        self.sessions = 0  # sessions it has run
        self.build: object = None  # the build of its environment it started on (``WorkerPool``)
        self.reusable = False  # its last session ended cleanly and it can take another
        self.idle_since = 0.0
        self._stderr_task = asyncio.create_task(self._forward_stderr())

    @classmethod
    async def spawn(
        cls,
        python: str,
        code_dir: Path,
        env: dict[str, str],
        uid: int = -1,
        sdk: str = "",
        limits: WorkerLimits | None = None,
    ) -> WorkerProcess:
        """A worker process of its own; with ``uid`` (and ``sdk``, see ``_run_module``), it
        becomes that user and takes ``limits`` before it runs anything of its packages."""
        to_child_r, to_child = _pipe(parent_reads=False)
        from_child_w, from_child = _pipe(parent_reads=True)
        user: list[int | str] = [uid, *_box(env, limits)] if uid >= 0 else []
        try:
            proc = await _run_module(
                python,
                "autokitteh._worker",
                [to_child_r, from_child_w],
                code_dir,
                env,
                sdk,
                user,
                stderr=asyncio.subprocess.PIPE,
                limit=STDERR_READ,
                start_new_session=True,
            )
        except BaseException:
            to_child.close()
            from_child.close()
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        return cls(proc, *await _frame_streams(from_child, to_child), uid)

    @classmethod
    async def fork(cls, server: ForkServer, code_dir: Path, uid: int = -1) -> WorkerProcess:
        """A worker forked by ``server`` (started with the same interpreter and environment)."""
        to_child_r, to_child = _pipe(parent_reads=False)
        from_child_w, from_child = _pipe(parent_reads=True)
        err_w, err = _pipe(parent_reads=True)
        try:
            pid = await server.fork(code_dir, [to_child_r, from_child_w, err_w], uid)
        except BaseException:
            for pipe in (to_child, from_child, err):
                pipe.close()
            raise
        finally:
            for fd in (to_child_r, from_child_w, err_w):
                os.close(fd)
        proc: ForkedProcess | None = None
        try:
            stderr, reading = await _read_stream(err, STDERR_READ)
            try:
                proc = ForkedProcess(pid, stderr, server)
            except BaseException:
                reading.close()
                raise
            return cls(proc, *await _frame_streams(from_child, to_child), uid)
        except BaseException:  # nothing will talk to it: it must not run on
            if proc is not None:
                proc.kill()
            else:
                _kill_forked(pid)
            to_child.close()
            from_child.close()
            raise

    async def _forward_stderr(self) -> None:
        """Reads the worker's stderr to its end, in chunks: lines are split here, so that no
        line, however long, stops the reading (``readline`` raises past its limit)."""
        stream = self.proc.stderr
        assert stream is not None
        while chunk := await stream.read(STDERR_READ):
            *ended, rest = chunk.split(b"\n")
            if len(ended) > STDERR_TAIL and not self.echo:  # the lines before are not kept
                self._line, self._line_length = bytearray(), 0
                ended = ended[-STDERR_TAIL:]
            for part in ended:
                self._take_stderr(part)
                self._end_stderr_line(b"\n")
            self._take_stderr(rest)
        if self._line_length:  # a last line without its newline
            self._end_stderr_line(b"")

    def _take_stderr(self, part: bytes) -> None:
        room = STDERR_LINE - len(self._line)
        if room > 0:
            self._line += part[:room]
        self._line_length += len(part)

    def _end_stderr_line(self, end: bytes) -> None:
        line, length = self._line, self._line_length
        if length > len(line):
            line += f" [... cut: a line of {length:,} bytes, its first {len(line):,} kept]".encode()
        text = (line + end).decode(errors="replace")
        self._line, self._line_length = bytearray(), 0
        self.stderr_tail.append(text)
        if self.echo:
            sys.stderr.write(text)

    SEND_TIMEOUT = 30.0
    READ_SIZE = 1 << 16  # a worker reads its messages on a thread of its own, at once

    async def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        writer = self._writer
        writer.write(encode_frame(header, blob, MAX_FRAME))
        transport = writer.transport
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[0]:
            # Under the low-water mark writing is not paused: drain does not wait (it raises
            # if the pipe is closed), so no timer is armed (a task a frame, on every step).
            await writer.drain()
            return
        try:
            await asyncio.wait_for(writer.drain(), self.SEND_TIMEOUT)
        except TimeoutError:
            raise FrameError("the worker stopped reading its messages") from None

    async def frames(self, owner: str = "") -> AsyncIterator[tuple[dict[str, Any], bytes]]:
        """Frames from the worker until it closes its end; FrameError when one is not a
        frame (too large, or a header that is not a JSON map with a type). What the pipe
        has is read at once and split here: a worker sends replayed steps many to a write,
        and one read for them all costs less than two or three awaits a frame."""
        buf = self._unread
        while True:
            try:
                if len(buf) >= HEADER_SIZE:
                    hlen, blen = split_sizes(bytes(buf[:HEADER_SIZE]))
                    end = HEADER_SIZE + hlen + blen
                    if len(buf) >= end:
                        head = bytes(buf[HEADER_SIZE : HEADER_SIZE + hlen])
                        header = await self._header(head, blen)
                        blob = bytes(buf[HEADER_SIZE + hlen : end])
                        del buf[:end]
                        yield header, blob
                        continue
                    if end - len(buf) > self.READ_SIZE:  # a large blob: the rest in one read
                        start = HEADER_SIZE + hlen
                        if len(buf) < start:  # (a read may end inside the header, or before)
                            buf += await self._reader.readexactly(start - len(buf))
                        head = bytes(buf[HEADER_SIZE:start])
                        header = await self._header(head, blen)
                        # held while the session handles it too (only the quick ones carry
                        # large blobs: a wait's step does not, see ``blob_limit``)
                        held = await READING.take(end - len(buf), owner)
                        try:
                            rest = await self._rest(end - len(buf))
                            blob = bytes(buf[start:]) + rest
                            del rest
                            buf.clear()
                            yield header, blob
                            del blob
                        finally:
                            READING.give(held, owner)
                        continue
                data = await self._reader.read(self.READ_SIZE)
            except asyncio.IncompleteReadError:
                return
            except (ValueError, RecursionError) as e:  # over the size limit, or not JSON
                raise FrameError(str(e)) from None
            if not data:
                return
            buf += data

    @staticmethod
    async def _header(head: bytes, blen: int) -> dict[str, Any]:
        """A header parsed off the event loop: a megabyte of nested JSON takes ~0.1 s, which
        every session of the runner would wait (a header of a few KiB, most, is parsed in
        place)."""
        if len(head) <= SMALL_HEADER:
            return _checked(head, blen)
        return await asyncio.to_thread(_checked, head, blen)

    async def _rest(self, n: int) -> bytes:
        """The rest of a large message, sent within ``LARGE_SEND_SECONDS``."""
        try:
            return await asyncio.wait_for(self._reader.readexactly(n), LARGE_SEND_SECONDS)
        except TimeoutError:
            raise ValueError(
                f"a message's last {n} bytes did not come within {LARGE_SEND_SECONDS:g} s"
            ) from None

    def quiet(self) -> bool:
        """Whether it has sent nothing since its last session ended: a worker that did
        (its handler wrote to the channel itself, after a `done` of its own) is not given
        another session."""
        return not self._unread and not self._reader._buffer  # type: ignore[attr-defined]

    def kill(self) -> None:
        """Kills the worker and everything it started, now: its process group, and every
        process of its user when it has one of its own. (It is never reused: its end may
        not have been seen yet when its session gives it back.)"""
        self.reusable = False
        if self.proc.returncode is None:
            if isinstance(self.proc, ForkedProcess):
                self.proc.kill()
            else:
                _kill_group(self.proc.pid)
        if self.uid >= 0:  # also what left its process group or session
            kill_user(self.uid)

    async def close(self) -> int:
        """Stops the worker (if still running) and returns its exit code."""
        self._writer.close()
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=2)
            except TimeoutError:
                self.proc.kill()
        code = await self.proc.wait()
        if self.users is not None and self.uid >= 0:
            uid, self.uid = self.uid, -1
            await self.users.give_back(uid)  # with whatever the handler left running
        await asyncio.gather(self._stderr_task, return_exceptions=True)
        return code


PoolKey = tuple[str, frozenset[tuple[str, str]]]


def pool_key(python: str, env: dict[str, str]) -> PoolKey:
    """Workers are interchangeable when started by the same interpreter and environment."""
    return python, frozenset(env.items())


def _venv_there(key: PoolKey) -> bool:
    venv = dict(key[1]).get("VIRTUAL_ENV")
    return venv is None or os.path.isdir(venv)


class WorkerPool:
    """Worker processes ready for a session, so that a session does not wait for an
    interpreter to start and import the SDK.

    Two kinds are kept per interpreter and spawn environment (a venv, or AK_WORKER_PYTHON):
    ``size`` spares that never ran a session, and workers that finished a session of a
    project and wait for the next session of the same project (up to ``reuse`` sessions per
    process; 1 means every session gets a fresh process). A worker only ever runs one
    session at a time, and never sessions of two projects."""

    IDLE_SECONDS = 60.0  # a finished worker not used again within this is stopped

    def __init__(
        self,
        size: int,
        cwd: Path,
        reuse: int = 1,
        fork: bool = False,
        users: UserIds | None = None,
        echo: bool = False,
        sdk: Path | None = None,
        limits: WorkerLimits | None = None,
    ) -> None:
        self.size, self.cwd, self.reuse = size, cwd, max(1, reuse)
        self.fork = fork and ForkServer.SUPPORTED
        self.users, self.echo = users, echo  # users: a user id per worker (the sandbox)
        # The sandbox starts its workers isolated, with the SDK from this root-owned copy.
        self.sdk = str(sdk) if users is not None and sdk is not None else ""
        if users is not None and not self.sdk:
            raise ValueError("a sandboxed worker pool needs the SDK's root-owned copy")
        self.limits = limits  # what a sandboxed worker takes before its packages run
        self._reached: set[str] = set()  # interpreters the workers' users can get to
        self._idle: dict[PoolKey, list[WorkerProcess]] = {}
        self._done: dict[tuple[PoolKey, str], list[WorkerProcess]] = {}
        self._filling: set[asyncio.Task[None]] = set()
        self._servers: dict[PoolKey, ForkServer] = {}
        self._starting = asyncio.Lock()
        # The build of each key's environment its workers were started on (``take``).
        self._builds: dict[PoolKey, object] = {}

    async def _start(self, key: PoolKey, python: str, env: dict[str, str]) -> WorkerProcess:
        """A new worker, as a user of its own when sandboxed."""
        uid, build = -1, self._builds.get(key)
        if self.users is not None:
            if python not in self._reached:
                await asyncio.to_thread(open_way_to, Path(python))
                self._reached.add(python)
            uid = await self.users.take((self.limits or WorkerLimits()).memory_mb)
        try:
            worker = await self._launch(key, python, env, uid)
        except BaseException:
            if self.users is not None:
                await self.users.give_back(uid)
            raise
        worker.users, worker.echo = self.users, self.echo
        worker.build = build
        return worker

    async def _launch(
        self, key: PoolKey, python: str, env: dict[str, str], uid: int
    ) -> WorkerProcess:
        """Forked by the fork server of ``key`` (started first if needed), or started as a
        process of its own when there is none or it failed."""
        if self.fork:
            try:
                async with self._starting:
                    server = self._servers.get(key)
                    if server is None or not server.alive:
                        if server is not None:
                            await server.close()
                        server = self._servers[key] = await ForkServer.start(
                            python, self.cwd, env, self.sdk, self.limits
                        )
                return await WorkerProcess.fork(server, self.cwd, uid)
            except (OSError, ConnectionError) as e:
                log.warning("no worker from the fork server (%s); starting one: %s", python, e)
        return await WorkerProcess.spawn(python, self.cwd, env, uid, self.sdk, self.limits)

    async def take(
        self, python: str, env: dict[str, str], project: str = "", build: object = None
    ) -> WorkerProcess:
        """A worker for a session of ``project``. ``build``: which build of the environment
        the session holds (``Held.build``); workers and the fork server started on another
        one are stopped, never handed out."""
        key = pool_key(python, env)
        if self._builds.get(key) != build:
            self._builds[key] = build
            await self._retire(key)
        worker = await self._pop_live(self._done.get((key, project), []), build)
        if worker is not None:
            return worker
        idle = self._idle.setdefault(key, [])
        worker = await self._pop_live(idle, build)
        if worker is None:
            worker = await self._start(key, python, env)
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

    async def _retire(self, key: PoolKey) -> None:
        """Stops the workers and the fork server of ``key``: its environment was removed and
        built again. A process started on the build before has its packages' path entries
        as they were (a ``.pth`` file installed since is never read) and keeps files of the
        build before open."""
        idle = self._idle.get(key, [])
        stale = idle[:]
        idle.clear()  # (in place: a refill under way goes on adding to it)
        for k in [k for k in self._done if k[0] == key]:
            stale += self._done.pop(k)
        async with self._starting:  # (not while it forks a worker)
            server = self._servers.pop(key, None)
        for w in stale:
            await w.close()
        if server is not None:
            await server.close()

    async def _pop_live(self, workers: list[WorkerProcess], build: object) -> WorkerProcess | None:
        """Takes the last live worker of the list started on ``build`` (closing the others
        it meets); the rest stay in it."""
        while workers:
            candidate = workers.pop()
            if candidate.proc.returncode is None and candidate.quiet() and candidate.build == build:
                return candidate
            candidate.kill()
            await candidate.close()
        return None

    async def give_back(
        self, worker: WorkerProcess, python: str, env: dict[str, str], project: str
    ) -> None:
        """A worker whose session ended: kept for the project's next session if it may run
        another, else stopped."""
        worker.sessions += 1
        key = pool_key(python, env)
        if (
            worker.sessions >= self.reuse
            or not worker.reusable
            or worker.proc.returncode is not None
            or worker.build != self._builds.get(key)  # (its environment was built again)
        ):
            await worker.close()
            return
        if worker.uid >= 0 and _may_have_left_some(worker):
            # What its session left running dies with the session, and the worker with it:
            # every process of its user is killed at once, which one that forks and exits
            # in a loop cannot outrun (``kill_user``), and the next session gets a fresh
            # worker. (A session that started nothing, or whose processes all ended and
            # were waited for, leaves the worker alone in its group, or without children.)
            await worker.close()
            return
        worker.stderr_tail.clear()
        worker.idle_since = asyncio.get_running_loop().time()
        self._done.setdefault((key, project), []).append(worker)

    async def reap(self) -> None:
        """Stops finished workers that waited longer than ``IDLE_SECONDS`` for a session,
        and the spares and fork servers of environments removed from the disk (pruned)."""
        for key in [k for k in self._builds if not _venv_there(k)]:
            del self._builds[key]
            await self._retire(key)
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
                idle.append(await self._start(key, python, env))
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
        for server in self._servers.values():
            await server.close()
        self._servers.clear()
