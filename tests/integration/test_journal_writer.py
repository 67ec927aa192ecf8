"""The journal writer of an attempt that lost its job writes nothing more: not even the
end of a session whose worker that attempt killed itself (a cancellation that came as the
conversation finished is not always delivered, and the fence alone refuses a stale write
only once another attempt wrote)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from akcore import bus, ids, journal
from akcore.datakey import Keyring
from akcore.journalio import Fenced, JournalWatch, JournalWriter, read_journal
from cryptography.fernet import Fernet
from nats.errors import OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeout


async def _journal(nc: Any) -> tuple[Any, str, Keyring]:
    """JetStream with the streams made, a new session's id and a keyring to seal with."""
    js = nc.jetstream()
    await bus.ensure_streams(js)
    return js, ids.new_id("ses"), Keyring([Fernet.generate_key()])


async def test_nothing_is_written_once_the_attempt_lost_its_job(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")
    try:
        js, session_id, keys = await _journal(nc)
        holds = [True]
        writer = JournalWriter(js, bus.publisher(nc), keys, session_id, 0, 1, lambda: holds[0])
        await writer.append(journal.Started(runner="r", attempt=1))
        holds[0] = False  # the lease lapsed
        ended = journal.Ended(state="ERROR", error="worker process exited with code -9")
        with pytest.raises(Fenced, match="lost its job"):
            await writer.append(ended, final=True)
        with pytest.raises(Fenced):  # and it stays fenced
            await writer.append(journal.Started(runner="r", attempt=1))
        read = await read_journal(js, session_id, keys)
        assert [r.kind for r in read.records] == [journal.Kind.STARTED]
    finally:
        await nc.close()


class _AckLost:
    """A publisher whose first publish is stored but whose acknowledgement never comes back
    to the writer (as when a stop cancels a step's write after it went out)."""

    def __init__(self, real: bus.Publisher) -> None:
        self.real, self.sent = real, asyncio.Event()

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> Any:
        ack = await self.real.publish(subject, data, headers=headers)
        if self.sent.is_set():
            return ack
        self.sent.set()
        await asyncio.Event().wait()  # (until cancelled)


async def test_a_stop_that_cancels_a_stored_write_still_ends_the_session(nats_url: str) -> None:
    """A stop cancels the conversation while a step's record is out: the record may be
    stored all the same. The session's end, written next, is then refused as out of turn;
    it must go after that record, not take it for another attempt's (the session was left
    running, and each later attempt did the same: a stop that never stopped it)."""
    nc = await bus.connect(nats_url, "t")
    try:
        js, session_id, keys = await _journal(nc)
        pub = _AckLost(bus.publisher(nc))
        writer = JournalWriter(js, pub, keys, session_id, 0, 1)  # type: ignore[arg-type]
        pub.sent.set()  # (the first write is acknowledged)
        await writer.append(journal.Started(runner="r", attempt=1))
        pub.sent.clear()
        step = asyncio.create_task(writer.append(journal.Sleep(step=1, seconds=5, deadline_us=1)))
        await pub.sent.wait()  # stored; its acknowledgement lost
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await step
        await writer.append(journal.Ended(state="STOPPED", error="stopped"), final=True)
        read = await read_journal(js, session_id, keys)
        kinds = [r.kind for r in read.records]
        assert kinds == [journal.Kind.STARTED, journal.Kind.SLEEP, journal.Kind.ENDED]
        assert [r.seq for r in read.records] == [1, 2, 3]
        # Another attempt's record is still another attempt's: fenced.
        other = JournalWriter(js, bus.publisher(nc), keys, session_id, writer.last, 4)
        await other.append(journal.Started(runner="r2", attempt=2))
        with pytest.raises(Fenced, match="another attempt wrote the journal"):
            await writer.append(journal.Ended(state="STOPPED"), final=True)
    finally:
        await nc.close()


class _StoredThenTimedOut:
    """The first publish after ``arm`` is stored, then times out (its acknowledgement lost),
    and the writing task is asked to stop (as a stop request cancels the conversation)."""

    def __init__(self, real: bus.Publisher) -> None:
        self.real = real
        self.victim: asyncio.Task[Any] | None = None

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> Any:
        ack = await self.real.publish(subject, data, headers=headers)
        if self.victim is None:
            return ack
        self.victim.cancel()  # delivered at the writer's next await: its pause
        self.victim = None
        raise NatsTimeout


class _TimedOutThenRefused:
    """The first publish after arming is stored and times out; the writer's retry is
    refused as out of turn (JetStream has it: the expected last sequence is checked before
    the message id), and the writing task is asked to stop as that answer comes: the
    cancellation lands in ``_settle``'s look at the journal, which would have found the
    record to be this attempt's own."""

    def __init__(self, real: bus.Publisher) -> None:
        self.real = real
        self.victim: asyncio.Task[Any] | None = None
        self.tries = 0

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> Any:
        if self.victim is None:
            return await self.real.publish(subject, data, headers=headers)
        self.tries += 1
        if self.tries == 1:
            await self.real.publish(subject, data, headers=headers)
            raise NatsTimeout
        try:
            return await self.real.publish(subject, data, headers=headers)
        except Exception as e:
            assert bus.is_wrong_last(e), e
            self.victim.cancel()
            self.victim = None
            raise


@pytest.mark.parametrize(
    "faulty",
    [_StoredThenTimedOut, _TimedOutThenRefused],
    ids=["cancelled in the pause between tries", "cancelled as a retry is refused"],
)
async def test_a_stop_during_a_retried_write_still_ends_the_session(
    nats_url: str, faulty: type[_StoredThenTimedOut] | type[_TimedOutThenRefused]
) -> None:
    nc = await bus.connect(nats_url, "t")
    try:
        js, session_id, keys = await _journal(nc)
        pub = faulty(bus.publisher(nc))
        writer = JournalWriter(js, pub, keys, session_id, 0, 1)  # type: ignore[arg-type]
        writer.RETRY_PAUSE = 0.0 if faulty is _TimedOutThenRefused else writer.RETRY_PAUSE
        await writer.append(journal.Started(runner="r", attempt=1))
        step = asyncio.create_task(writer.append(journal.Print(text="hello")))
        pub.victim = step
        try:
            await step
        except asyncio.CancelledError:
            pass
        # The stop's end: must go after the print (the journal's last record is this
        # attempt's own), not raise Fenced "another attempt wrote the journal".
        await writer.append(journal.Ended(state="STOPPED", error="stopped"), final=True)
        read = await read_journal(js, session_id, keys)
        kinds = [r.kind for r in read.records]
        assert kinds == [journal.Kind.STARTED, journal.Kind.PRINT, journal.Kind.ENDED]
    finally:
        await nc.close()


async def test_the_watch_stops_an_attempt_as_soon_as_another_one_is_about_to_write(
    nats_url: str,
) -> None:
    """``JournalWatch``: an attempt's own notice, and a stale attempt's (its `started`
    would be refused), leave it be; another attempt's whose `started` goes after its
    records stops it at once, saying which; after its last record, nothing does."""
    nc = await bus.connect(nats_url, "t")
    try:
        js, session_id, keys = await _journal(nc)
        mine = JournalWriter(js, bus.publisher(nc), keys, session_id, 0, 1)
        taken: list[tuple[str, bool]] = []
        watch = JournalWatch(nc, mine, lambda why, same: taken.append((why, same)), 70, 1, "r1")
        await watch.start()
        await mine.append(journal.Started(runner="r1", attempt=1))  # (announced)
        first = mine.last
        await mine.append(journal.Print(text="one"))
        await heard_by(watch, 1)
        assert taken == []  # its own notice

        stale = JournalWriter(js, bus.publisher(nc), keys, session_id, first, 2)
        await _started(nc, stale, 2, "r0", 71)
        await heard_by(watch, 2)
        assert taken == []  # its `started` is refused: the attempt still owns the journal

        other = JournalWriter(js, bus.publisher(nc), keys, session_id, mine.last, 3)
        await _started(nc, other, 2, "r2", 70)
        await heard_by(watch, 3)
        assert taken == [
            (
                "attempt 2 of runner r2 took the session over: its records (from number 3) go "
                "after this attempt's",
                True,  # another delivery of the same job message (70)
            )
        ]
        with pytest.raises(Fenced):
            await mine.append(journal.Print(text="two"))
        await watch.stop()

        # An attempt whose last record is written lets the next one start.
        taken.clear()
        watch = JournalWatch(nc, other, lambda why, same: taken.append((why, same)), 70)
        await watch.start()
        await other.append(journal.Retry(attempt=2, error="NATS away"), final=True)
        nxt = JournalWriter(js, bus.publisher(nc), keys, session_id, other.last, 5)
        await _started(nc, nxt, 3, "r3", 72)
        await heard_by(watch, 1)
        assert taken == []
        await watch.stop()
    finally:
        await nc.close()


async def test_an_attempt_that_cannot_write_says_nothing(nats_url: str) -> None:
    """An attempt whose job was lost after it read the journal (its runner froze, its
    heartbeats went unconfirmed) writes nothing, so it announces nothing either: the
    attempt that runs the session, busy in a long activity, must not stop for it."""
    nc = await bus.connect(nats_url, "t")
    try:
        js, session_id, keys = await _journal(nc)
        live = JournalWriter(js, bus.publisher(nc), keys, session_id, 0, 1)
        await live.append(journal.Started(runner="r1", attempt=1))
        taken: list[str] = []
        watch = JournalWatch(nc, live, lambda why, same: taken.append(why), 70)
        await watch.start()
        lapsed = JournalWriter(js, bus.publisher(nc), keys, session_id, live.last, 2, lambda: False)
        JournalWatch(nc, lapsed, lambda why, same: None, 70, 2, "r2")
        with pytest.raises(Fenced, match="lost its job"):
            await lapsed.append(journal.Started(runner="r2", attempt=2))
        # A stale attempt's notice after it, on the same connection: heard in order.
        stale = JournalWriter(js, bus.publisher(nc), keys, session_id, live.last - 1, 2)
        await _started(nc, stale, 2, "r0", 71)
        await heard_by(watch, 1)
        assert watch.heard == 1 and taken == []
        await watch.stop()
    finally:
        await nc.close()


class _HeldPublish:
    """A connection whose publishes go out at once but return only once ``release`` is
    set (as nats-py's do when its buffer is backed up)."""

    def __init__(self, nc: Any) -> None:
        self._nc, self.release = nc, asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        await self._nc.publish(*args, **kwargs)
        await self._nc.flush()
        await self.release.wait()


async def test_two_attempts_announcing_at_once_leave_it_to_jetstream(nats_url: str) -> None:
    """Two wake jobs of one parking (two messages) announce at once, each notice reaching
    the other attempt before its own publish returned: each counts as writing from its
    notice on, so neither stops the other (both would have stopped, both wake jobs
    dropped, the session left RUNNING with no job); JetStream stores one `started` and
    fences the other."""
    nc1 = await bus.connect(nats_url, "r1")
    nc2 = await bus.connect(nats_url, "r2")
    try:
        js, session_id, keys = await _journal(nc1)
        first = JournalWriter(js, bus.publisher(nc1), keys, session_id, 0, 1)
        await first.append(journal.Started(runner="r0", attempt=1))
        await first.append(journal.Parked(step=1, reason="sleep"))
        taken: list[str] = []
        held = [_HeldPublish(nc1), _HeldPublish(nc2)]
        writers, watches = [], []
        for n, (nc, slow) in enumerate(zip((nc1, nc2), held, strict=True)):
            w = JournalWriter(js, bus.publisher(nc), keys, session_id, first.last, 3)
            watch = JournalWatch(slow, w, lambda why, same: taken.append(why), 80 + n, 2, f"r{n}")  # type: ignore[arg-type]
            await watch.start()
            writers.append(w)
            watches.append(watch)
        for nc in (nc1, nc2):  # (each watch's subscription reaches the server before the
            await nc.flush()  # other connection's notice: else it missed it, 2 runs in 30)
        appends = [
            asyncio.create_task(w.append(journal.Started(runner="r", attempt=2))) for w in writers
        ]
        for watch in watches:
            await heard_by(watch, 2)  # its own notice and the other's
        for slow in held:
            slow.release.set()
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
        assert taken == []
        assert sorted(type(o).__name__ for o in outcomes) == ["Fenced", "int"], outcomes
        for watch in watches:
            await watch.stop()
    finally:
        await nc1.close()
        await nc2.close()


async def _started(nc: Any, writer: JournalWriter, attempt: int, runner: str, job: int) -> None:
    """What another attempt does as it starts: announces and writes its `started` record
    (refused, if it goes before the journal's last record); ``job``: its job message."""
    JournalWatch(nc, writer, lambda why, same: None, job, attempt, runner)
    try:
        await writer.append(journal.Started(runner=runner, attempt=attempt))
    except Fenced:
        pass


async def heard_by(watch: JournalWatch, n: int) -> None:
    async with asyncio.timeout(10):
        while watch.heard < n:
            await asyncio.sleep(0.01)


def test_a_record_racing_one_of_the_attempts_own_is_left_to_jetstream() -> None:
    """While an append is out, a record expecting the same last one may be stored or
    refused (JetStream stores one of the two): the append's own answer settles it. One
    that expects a record the attempt has not stored yet was written after it: taken."""
    writer = JournalWriter(None, None, Keyring([Fernet.generate_key()]), "ses_x", 7, 3)  # type: ignore[arg-type]
    assert writer.overtaken(7)  # the attempt's last, nothing of its own out: stored
    assert not writer.overtaken(6) and not writer.overtaken(0)
    writer.sending = 1
    assert not writer.overtaken(7)
    assert writer.overtaken(8)
    writer.sending, writer.closed = 0, True
    assert not writer.overtaken(8)


async def test_the_watch_tells_another_job_of_the_session_from_another_delivery(
    nats_url: str,
) -> None:
    """A second wake job of one parking (another message) is told apart from a second
    delivery of the attempt's own job message: only the former may be dropped by the
    runner that was overtaken (acking the latter would ack the live attempt's job)."""
    nc = await bus.connect(nats_url, "t")
    try:
        js, session_id, keys = await _journal(nc)
        mine = JournalWriter(js, bus.publisher(nc), keys, session_id, 0, 1)
        await mine.append(journal.Started(runner="r1", attempt=1))
        same: list[bool] = []
        watch = JournalWatch(nc, mine, lambda why, s: same.append(s), 70)
        await watch.start()
        other = JournalWriter(js, bus.publisher(nc), keys, session_id, mine.last, 2)
        await _started(nc, other, 2, "r2", 80)
        await heard_by(watch, 1)
        assert same == [False]
        await watch.stop()
    finally:
        await nc.close()


class _BufferFull:
    """A connection reconnecting with its buffer full: nats-py's publish raises at once."""

    def __init__(self, nc: Any) -> None:
        self._nc = nc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        raise OutboundBufferLimitError


async def test_a_notice_that_cannot_be_published_leaves_the_record_to_the_writer(
    nats_url: str,
) -> None:
    """The notice is best effort: failing to publish it (the client's buffer full while it
    reconnects) neither fails the attempt's first record, which the writer retries until
    NATS is back, nor spends its record number."""
    nc = await bus.connect(nats_url, "t")
    try:
        js, session_id, keys = await _journal(nc)
        writer = JournalWriter(js, bus.publisher(nc), keys, session_id, 0, 1)
        JournalWatch(_BufferFull(nc), writer, lambda why, same: None, 70, 1, "r1")  # type: ignore[arg-type]
        await writer.append(journal.Started(runner="r1", attempt=1))
        read = await read_journal(js, session_id, keys)
        assert [(r.seq, r.kind) for r in read.records] == [(1, journal.Kind.STARTED)]
    finally:
        await nc.close()
