"""A worker's pipe ends when connecting them is cancelled (a session's attempt cancelled
while its worker starts): no descriptor stays registered in the event loop once closed (a
registration left behind belongs to whatever gets that number next)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from ak_runner import worker


def _registered(loop: asyncio.AbstractEventLoop) -> set[int]:
    return set(loop._selector.get_map())  # type: ignore[attr-defined]


async def test_a_cancelled_frame_streams_leaves_no_closed_fd_in_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    before = _registered(loop)
    to_child_r, to_child = worker._pipe(parent_reads=False)
    from_child_w, from_child = worker._pipe(parent_reads=True)
    ends = {to_child.fileno(), from_child.fileno()}
    real = loop.connect_write_pipe

    async def cancelled_while_connecting(*args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # lands on connect_write_pipe's own await
        return await real(*args, **kwargs)

    monkeypatch.setattr(loop, "connect_write_pipe", cancelled_while_connecting)
    with pytest.raises(asyncio.CancelledError):
        await worker._frame_streams(from_child, to_child)
    monkeypatch.undo()
    for _ in range(10):  # let the transports' scheduled callbacks run
        await asyncio.sleep(0)
    os.close(to_child_r)
    os.close(from_child_w)
    assert to_child.closed and from_child.closed
    stale = (_registered(loop) - before) & ends
    assert not stale, f"closed pipe ends still registered in the event loop: {stale}"
    # What a stale registration does to the next pipe that gets its number:
    r, w = os.pipe()
    try:
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", buffering=0)
        )
        os.write(w, b"x")
        assert await asyncio.wait_for(reader.read(1), 5) == b"x"
        transport.close()
    finally:
        os.close(w)


class _Watched:
    """A pipe end's file object that notes whether its descriptor was still open when it
    was closed (closed already: someone closed that number before it, and its own close
    would close whatever got the number meanwhile)."""

    def __init__(self, fd: int) -> None:
        self.file = os.fdopen(fd, "rb", buffering=0)
        self.closed_twice = False

    def fileno(self) -> int:
        return self.file.fileno()

    @property
    def closed(self) -> bool:
        return self.file.closed

    def close(self) -> None:
        if not self.file.closed:
            try:
                os.fstat(self.file.fileno())
            except OSError:
                self.closed_twice = True
        self.file.close()


def test_uvloop_never_closes_a_pipe_end_twice() -> None:
    """uvloop's pipe transports close their descriptor in libuv and then close the file
    object they were given: with the runner's own file object, the same number was closed
    twice, and a thread's file opened in between (clearing a worker user's files, taking a
    user id's lock) lost its descriptor ('Bad file descriptor', runner aborts under worker
    churn)."""
    uvloop = pytest.importorskip("uvloop")

    async def run() -> list[_Watched]:
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        reading, writing = _Watched(r1), _Watched(w2)
        _, transport = await worker._read_stream(reading)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        wt, _ = await worker._connect(  # type: ignore[arg-type]
            writing, loop.connect_write_pipe, asyncio.streams.FlowControlMixin
        )
        transport.close()
        wt.close()
        for _ in range(10):
            await asyncio.sleep(0)
        os.close(w1)
        os.close(r2)
        return [reading, writing]

    ends = uvloop.run(run())
    assert all(end.closed for end in ends)
    assert not any(end.closed_twice for end in ends)


async def test_the_fork_server_keeps_exits_only_of_its_own_forks() -> None:
    """The fork server reports every child it reaps, also a handler's process made its
    child (clone with CLONE_PARENT): only a worker forked and not yet watched has its exit
    kept for it; an exit of a process nobody forked is not kept for ever."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    server = worker.ForkServer(None, ours)  # type: ignore[arg-type]
    try:
        forking = asyncio.create_task(server.fork(Path("/"), []))
        await asyncio.sleep(0)
        assert theirs.recv(256).startswith(b"F")
        theirs.send(b"P4242")
        assert await forking == 4242
        second = asyncio.create_task(server.fork(Path("/"), []))
        await asyncio.sleep(0)  # (its request sent)
        assert theirs.recv(256).startswith(b"F")
        theirs.send(b"X4242 3")  # the worker ended before its asker watched it: kept
        theirs.send(b"X999999 0")  # not a fork of this server's: dropped
        theirs.send(b"P4243")
        assert await second == 4243  # the server's reports are read in order: all of them
        assert server._codes == {4242: 3}
    finally:
        server._reading.cancel()
        await asyncio.gather(server._reading, return_exceptions=True)
        ours.close()
        theirs.close()


async def test_a_worker_that_stops_reading_its_frames_is_given_up_on() -> None:
    """Frames go out without a timer while the pipe takes them; once writing waits (the
    worker stopped reading), the wait has a limit and ends in FrameError."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(), os.fdopen(w, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    fake = type("W", (), {"_writer": writer, "SEND_TIMEOUT": 0.5})()
    try:
        await worker.WorkerProcess.send(fake, {"type": "step"})  # type: ignore[arg-type]
        assert os.read(r, 65536)  # it went out
        with pytest.raises(worker.FrameError, match="stopped reading its messages"):
            for _ in range(100):  # nobody reads: the pipe fills, then the transport's buffer
                await worker.WorkerProcess.send(fake, {"type": "x"}, b"y" * 100_000)  # type: ignore[arg-type]
    finally:
        transport.abort()
        os.close(r)


def _reading(data: list[bytes]) -> worker.WorkerProcess:
    """A worker process object whose pipe from the worker gives ``data``, write by write,
    then closes."""
    reader = asyncio.StreamReader()
    w = object.__new__(worker.WorkerProcess)
    w._reader, w._unread = reader, bytearray()  # type: ignore[attr-defined]

    async def feed() -> None:
        for chunk in data:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        reader.feed_eof()

    asyncio.get_running_loop().create_task(feed())
    return w


async def test_frames_come_whole_however_the_pipe_cuts_them() -> None:
    """Many frames in one write, a frame cut across writes, a blob larger than a read: each
    comes whole, in order; bytes after the last whole frame are not a frame."""
    from autokitteh._channel import encode_frame

    small = [encode_frame({"type": "step", "step": n, "ahead": True}) for n in range(1, 101)]
    big = encode_frame({"type": "activity", "step": 101}, os.urandom(300_000))
    data = b"".join(small) + big + encode_frame({"type": "done", "ok": True})
    cuts = [data[:7], data[7:5000], data[5000:80_000], data[80_000:-3], data[-3:]]
    got = [(h, b) async for h, b in _reading(cuts).frames()]
    assert [h.get("step") for h, _ in got] == [*range(1, 102), None]
    assert got[100][1] == big[-300_000:]
    assert got[-1][0] == {"type": "done", "ok": True}


async def test_what_a_worker_sends_after_its_last_frame_keeps_it_from_another_session() -> None:
    from autokitteh._channel import encode_frame

    done, extra = encode_frame({"type": "done", "ok": True}), encode_frame({"type": "print"})
    w = _reading([done + extra])
    async for header, _ in w.frames():
        assert header["type"] == "done"
        break  # (the session ends at its `done`; the rest came in the same read)
    assert not w.quiet()


async def test_a_large_frame_comes_whole_wherever_a_read_ends_in_its_header() -> None:
    """A read that ends right after a large frame's sizes, or inside its header (a handler's
    error with a long message makes a header larger than a read), still gives the frame."""
    from autokitteh._channel import encode_frame

    blob = encode_frame({"type": "activity", "step": 1}, b"y" * 300_000)
    got = [(h, b) async for h, b in _reading([blob[:8], blob[8:12], blob[12:]]).frames()]
    assert got == [({"type": "activity", "step": 1}, b"y" * 300_000)]
    error = {"type": "done", "ok": False, "error": "x" * 200_000}
    got = [(h, b) async for h, b in _reading([encode_frame(error)]).frames()]
    assert got == [(error, b"")]


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ({"type": "print", "n": 1}, worker.PRINT_BLOB + 1),
        ({"type": "activity", "step": 1}, worker.RESULT_BLOB + 1),
        ({"type": "step", "step": 1, "kind": "next_event"}, worker.SMALL_BLOB + 1),
        ({"type": "done", "ok": True}, worker.VALUE_BLOB + 1),
        # a wait holds what it carries while it waits: only a signal carries a payload
        ({"type": "syscall", "name": "next_signal", "args": {}}, worker.SMALL_BLOB + 1),
        ({"type": "syscall", "name": "signal", "args": {}}, worker.VALUE_BLOB + 1),
        ({"type": "forged"}, worker.SMALL_BLOB + 1),
    ],
)
async def test_a_message_announcing_more_than_its_type_carries_is_refused_unread(
    header: dict[str, Any], size: int
) -> None:
    """A handler can write to its pipe itself: a frame of up to 64 MiB per worker, held by
    the runner (12 workers took a runner to 800 MB). Its header is read first, and a blob
    over its type's limit ends the session as a malformed message before it is read."""
    from autokitteh._channel import HEADER_SIZE, encode_frame

    frame = encode_frame(header, b"\0" * size)
    w = _reading([frame[: HEADER_SIZE + 200], frame[HEADER_SIZE + 200 :]])
    with pytest.raises(worker.FrameError, match=f"message of {size} bytes, over its"):
        [x async for x in w.frames()]
    for _ in range(5):  # (the rest fed)
        await asyncio.sleep(0)
    unread = len(w._reader._buffer)  # type: ignore[attr-defined]
    assert unread >= size - 2 * w.READ_SIZE  # the blob was not read


async def test_the_largest_messages_of_each_type_still_come() -> None:
    from autokitteh._channel import encode_frame

    frames = [
        encode_frame({"type": "syscall", "args": {"v": [[]] * 100_000}}),  # (parsed on a thread)
        encode_frame({"type": "print", "n": 1}, b"p" * worker.PRINT_BLOB),
        encode_frame({"type": "step", "step": 1, "kind": "signal"}, b"s" * worker.VALUE_BLOB),
        encode_frame({"type": "syscall", "name": "signal"}, b"s" * worker.VALUE_BLOB),
        encode_frame({"type": "done", "ok": True}, b"d" * worker.VALUE_BLOB),
    ]
    got = [(h["type"], len(b)) async for h, b in _reading(frames).frames()]
    assert got == [
        ("syscall", 0),
        ("print", worker.PRINT_BLOB),
        ("step", worker.VALUE_BLOB),
        ("syscall", worker.VALUE_BLOB),
        ("done", worker.VALUE_BLOB),
    ]
    assert worker.READING.free == worker.READING.total  # all given back


async def test_large_messages_are_read_within_the_budget_in_the_order_asked() -> None:
    """In the order asked, a larger one not passed by smaller ones; but one owner (a
    project) holds at most a quarter: its further messages wait while others' go."""
    budget = worker.ByteBudget(100)  # a quarter of it, 25, for one owner at most
    first = await budget.take(20, "a")
    assert first == 20 and budget.free == 80
    order: list[str] = []

    async def taker(name: str, n: int, owner: str) -> int:
        got = await budget.take(n, owner)
        order.append(name)
        return got

    more_a = asyncio.create_task(taker("a2", 20, "a"))  # over a's share: waits
    b = asyncio.create_task(taker("b", 25, "b"))  # another owner's: goes past it
    c = asyncio.create_task(taker("c", 1000, "c"))  # more than a share: takes one
    await asyncio.sleep(0)
    assert order == ["b", "c"] and budget.free == 30 and not more_a.done()
    d = asyncio.create_task(taker("d", 25, "d"))
    e = asyncio.create_task(taker("e", 25, "e"))  # does not fit: waits
    f = asyncio.create_task(taker("f", 5, "f"))  # fits, but waits behind a larger one
    await asyncio.sleep(0)
    assert order == ["b", "c", "d"] and budget.free == 5
    budget.give(25, "d")  # (as if d's message was handled)
    await asyncio.sleep(0)
    assert order == ["b", "c", "d", "e", "f"] and budget.free == 0 and not more_a.done()
    budget.give(first, "a")
    assert await more_a == 20 and budget.free == 0
    for task, owner in ((b, "b"), (c, "c"), (d, None), (e, "e"), (f, "f"), (more_a, "a")):
        got = await task
        if owner:
            budget.give(got, owner)
    assert budget.free == 100 and not budget._held and not budget._waiting
    assert c.result() == 25


async def test_a_message_that_gave_up_waiting_leaves_the_budget_as_it_was() -> None:
    budget = worker.ByteBudget(100)
    assert await budget.take(25, "x") == 25
    waiting = asyncio.create_task(budget.take(10, "x"))  # over x's share
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not budget._waiting and budget.free == 75
    budget.give(25, "x")
    assert budget.free == 100 and not budget._held
    assert await budget.take(0, "x") == 0  # nothing to take: no wait


async def test_a_large_message_sent_slowly_is_refused_past_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker writing a large message's start and then nothing would hold its share of
    the budget for ever."""
    from autokitteh._channel import encode_frame

    monkeypatch.setattr(worker, "LARGE_SEND_SECONDS", 0.2)
    frame = encode_frame({"type": "done", "ok": True}, b"d" * 500_000)
    reader = asyncio.StreamReader()
    w = object.__new__(worker.WorkerProcess)
    w._reader, w._unread = reader, bytearray()  # type: ignore[attr-defined]
    reader.feed_data(frame[:100_000])  # and no more, never closed
    with pytest.raises(worker.FrameError, match="last .* bytes did not come within 0.2 s"):
        [x async for x in w.frames("evil")]
    assert worker.READING.free == worker.READING.total


@pytest.mark.parametrize("number", [b"Infinity", b"-Infinity", b"NaN", b"1e999", b"-1e400"])
async def test_a_number_that_is_not_finite_is_a_malformed_message(number: bytes) -> None:
    """JSON's decoder takes ``Infinity`` by default: a handler's own frame of a sleep that
    long ended its session as the runner's failure (an OverflowError, with a traceback in
    the runner's log), not as the malformed message it is."""
    from autokitteh._channel import decode_header

    head = b'{"type":"step","step":1,"kind":"sleep","function":"sleep","seconds":' + number + b"}"
    with pytest.raises(ValueError, match="not finite"):
        decode_header(head)
