"""A session's journal on JetStream: reading it back, and appending to it as its one writer.

Only one attempt of a session may write its journal. Each append says which record it
expects to be the subject's last (``Nats-Expected-Last-Subject-Sequence``): when another
attempt wrote in between, JetStream refuses it, and the writer raises ``Fenced``. The
attempt must then stop at once and touch nothing else (its worker killed, its job neither
acked nor naked): the other attempt owns the session.

Records rest sealed (``journal.seal``): the writer seals each, the reader unseals them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from . import bus, chunks, journal, subjects, timefmt, wire
from .bus import may_pass
from .datakey import Keyring

log = logging.getLogger(__name__)


class Fenced(Exception):
    """Another attempt of the session wrote its journal: this attempt no longer owns it."""


class NotCreated(Fenced):
    """The session's `created` record is not in its journal (yet): nothing may be written
    before it, so the attempt stops as a fenced one does and its job comes back later."""


class RecordTooLarge(Exception):
    """A record over the NATS message limit: writing it again would fail again."""


class JournalFull(Exception):
    """The session's journal reached its limits (records or bytes): it ends."""


@dataclass(frozen=True)
class Limits:
    """How long one session's journal may grow: one session must not fill the stream, and
    a journal must stay quick to read back for a replay (Temporal's history limits are of
    the same size)."""

    records: int = 50_000
    size: int = 50 * 1024 * 1024


async def last_seq(js: JetStreamContext, session_id: str) -> int:
    """The stream sequence of the session's last record (0: none)."""
    try:
        raw = await js.get_last_msg(subjects.STREAM_JOURNAL, subjects.journal_subject(session_id))
    except NotFoundError:
        return 0
    return raw.seq or 0


# Pauses between looks for a `created` record published along with its job (``created_seq``).
CREATED_PAUSES = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


async def created_seq(js: JetStreamContext, session_id: str) -> tuple[int, bytes]:
    """The stream sequence of the session's `created` record, its journal's only record,
    and the record as it rests.

    A session's `created` record and its job are published together (``sessions``): the
    job may be delivered before the record is stored (they go to two streams), so a
    journal still empty is looked at again for a while (about 2 s). Raises NotCreated when
    it stays empty (the record's publish failed: its publisher tries again, and the job
    comes back later), Fenced when the last record is another one (another attempt wrote)."""
    subject = subjects.journal_subject(session_id)
    for pause in CREATED_PAUSES:
        if pause:
            await asyncio.sleep(pause)
        try:
            raw = await js.get_last_msg(subjects.STREAM_JOURNAL, subject)
        except NotFoundError:
            continue
        rec = wire.decode(wire.JournalRecord, raw.data or b"")
        if rec.kind == wire.CREATED and rec.seq == 0 and raw.seq:
            return raw.seq, raw.data or b""
        raise Fenced(f"session {session_id}: another attempt wrote its journal first")
    raise NotCreated(f"session {session_id}: its `created` record is not in its journal yet")


async def session_project(js: JetStreamContext, session_id: str) -> str | None:
    """The project of a session, from its journal's first record (None: no journal)."""
    subject = subjects.journal_subject(session_id)
    try:
        raw = await js.get_msg(subjects.STREAM_JOURNAL, seq=1, subject=subject, next=True)
    except NotFoundError:
        return None
    rec = wire.decode(wire.JournalRecord, raw.data or b"")
    project = rec.data.get("project_id") if rec.kind == wire.CREATED else None
    return str(project) if project else None


@dataclass
class Journal:
    """A session's records as read back, the stream sequence of the last one (0 when there
    is none) and how many bytes they take; ``chunked``: how many of them (from the first)
    came from replay chunks, ``unchunked`` the others as (stream sequence, size, record),
    for the attempt's own chunks (``chunks.Chunker``)."""

    records: list[wire.JournalRecord]
    last: int
    size: int
    chunked: int = 0
    unchunked: list[tuple[int, int, wire.JournalRecord]] = field(default_factory=list)


async def read_journal(
    js: JetStreamContext,
    session_id: str,
    keys: Keyring,
    timeout: float = 30.0,
    use_chunks: bool = True,
) -> Journal:
    """Every record of one session, in order and unsealed: the replay chunks that join
    (``akcore.chunks``), then the journal's records after them (all of them without chunks),
    read with an ordered consumer up to the subject's last message. Raises MalformedRecord
    for a record of the journal that cannot be decoded or does not unseal."""
    subject = subjects.journal_subject(session_id)
    try:
        last = await js.get_last_msg(subjects.STREAM_JOURNAL, subject)
    except NotFoundError:
        return Journal([], 0, 0)
    last_seq = last.seq or 0
    if use_chunks and _records_in(last.data or b"") < chunks.CHUNK_RECORDS:
        use_chunks = False  # (a short journal: read at once, and not worth a look for chunks)
    stored = await _chunked(js, session_id, keys, last_seq, timeout) if use_chunks else []
    start = stored[-1][0] + 1 if stored else 1
    tail = await _read(js, subjects.STREAM_JOURNAL, subject, start, last_seq, timeout)
    records = [rec for _, _, rec in stored]
    for stream_seq, data in tail:
        try:
            records.append(_open(data, session_id, keys))
        except Exception as e:
            raise journal.MalformedRecord(f"record at {stream_seq}: {e}") from None
    if stored and len(records) > len(stored) and records[len(stored)].seq != len(stored):
        log.warning("session %s: replay chunks do not join the journal; read it all", session_id)
        return await read_journal(js, session_id, keys, timeout, use_chunks=False)
    return Journal(
        records,
        tail[-1][0] if tail else start - 1,
        sum(n for _, n, _ in stored) + sum(len(d) for _, d in tail),
        len(stored),
        [(s, len(d), r) for (s, d), r in zip(tail, records[len(stored) :], strict=True)],
    )


def _records_in(last: bytes) -> int:
    """How many records a journal whose last record is ``last`` holds, about (its record
    number, plus one); 0 when that cannot be told."""
    try:
        return int(wire.decode(wire.JournalRecord, last).seq) + 1
    except Exception:
        return 0


def _open(data: bytes, session_id: str, keys: Keyring) -> wire.JournalRecord:
    rec = journal.unseal(wire.decode(wire.JournalRecord, data), keys)
    if rec.session_id != session_id:
        raise ValueError(f"a record of another session ({rec.session_id})")
    return rec


# After replay chunks could not be read, they are left alone this long (``_chunked``).
CHUNKS_PAUSE = 60.0
# How long a replay waits for the chunks it found (a few messages: they come at once).
CHUNKS_WAIT = 1.0
_chunks_unread_until = [0.0]  # (loop time)


async def _chunked(
    js: JetStreamContext, session_id: str, keys: Keyring, last: int, timeout: float
) -> list[tuple[int, int, wire.JournalRecord]]:
    """The journal's records that its replay chunks hold from the first on, as (stream
    sequence, size, record): none when there are no chunks or they cannot be read."""
    subject = subjects.replay_subject(session_id)
    now = asyncio.get_running_loop().time()
    if now < _chunks_unread_until[0]:
        return []
    try:
        newest = await js.get_last_msg(subjects.STREAM_REPLAY, subject)
        # (Purged meanwhile, with its session's end, they never come: not waited for long.)
        wait = min(timeout, CHUNKS_WAIT)
        msgs = await _read(js, subjects.STREAM_REPLAY, subject, 1, newest.seq or 0, wait)
    except (NotFoundError, TimeoutError):
        return []
    except Exception as e:  # (they only save time: a NATS user not allowed to read them,
        # from before they existed, would make every replay wait; not tried for a while)
        log.warning(
            "session %s: replay chunks cannot be read (%r): replays read only the journal "
            "for a minute",
            session_id,
            e,
        )
        _chunks_unread_until[0] = now + CHUNKS_PAUSE
        return []
    found = []
    for stream_seq, data in msgs:
        try:
            found.append(chunks.unseal(data, session_id, keys))
        except Exception as e:
            log.warning("session %s: replay chunk at %d not used: %s", session_id, stream_seq, e)
    return chunks.joined(found, last)


async def _read(
    js: JetStreamContext, stream: str, subject: str, start: int, last: int, timeout: float
) -> list[tuple[int, bytes]]:
    """The messages of ``subject`` from stream sequence ``start`` to ``last``, as (stream
    sequence, data): an ordered consumer, read to ``last`` or to what is there."""
    if start > last:
        return []
    out: list[tuple[int, bytes]] = []
    read_all = asyncio.Event()

    # A callback, not next_msg: next_msg starts two tasks per message, which was most of
    # the time a replay took to read a long journal.
    async def on_msg(msg: Msg) -> None:
        if read_all.is_set():
            return
        meta = msg.metadata
        out.append((meta.sequence.stream, msg.data))
        if meta.sequence.stream >= last or meta.num_pending == 0:
            read_all.set()

    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if start > 1:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, cb=on_msg, config=config
    )
    try:
        async with asyncio.timeout(timeout):
            await read_all.wait()
        return out
    finally:
        await sub.unsubscribe()


# Records after which an attempt writes nothing more: another may write the journal then.
LAST_RECORDS = (journal.Ended, journal.Retry, journal.Parked)


class JournalWatch:
    """Stops an attempt as soon as another attempt of its session is about to write.

    Two attempts may run one session at once when JetStream delivers its job twice (a
    consumer leader change in a cluster, while the first holder's heartbeats are still
    confirmed): the fence stops the older one at its next write, but its worker may start
    the next step meanwhile, so that an activity runs twice, both at once. As its first
    append begins, every attempt says on ``ak.attempts.<session>`` (core NATS) that it
    writes now, and which record it expects to be the journal's last (the writer's
    ``announce`` hook); each attempt of the session listening there calls ``on_taken``
    (why, and whether the other attempt runs a delivery of the same job message) when that
    record would be stored after its own (``JournalWriter.overtaken``), which is before
    the new attempt's worker can start a step. An attempt counts as writing from its
    notice on, so two attempts announcing at once leave it to JetStream, which stores one
    `started` and fences the other; one that cannot write (its job lost) says nothing.

    The fence remains the guarantee: the watch narrows the window to the time a message
    takes (an attempt that announced before another subscribed, or a runner frozen as the
    notice came, is left to the fence). A notice whose write then fails (NATS away, the
    job lost meanwhile) has stopped the other attempt for nothing: the session goes on
    once its job comes back, as after a runner's death; a notice that cannot be published
    is left out, not the record. One notice per attempt: nothing is added to a step."""

    def __init__(
        self,
        nc: Client,
        writer: JournalWriter,
        on_taken: Callable[[str, bool], None],
        job_seq: int = 0,
        attempt: int = 0,
        runner: str = "",
    ) -> None:
        """``job_seq``: the stream sequence of the job message the attempt runs (0: none).
        Arms ``writer``: its first append announces itself."""
        self.nc, self.writer, self.on_taken, self.job_seq = nc, writer, on_taken, job_seq
        self.attempt, self.runner = attempt, runner
        self.subject = subjects.attempts_subject(writer.session_id)
        self.token = secrets.token_hex(8)
        self._sub: Any = None
        self.heard = 0  # notices heard, its own included (for tests)
        writer.announce = self._announce

    async def start(self) -> None:
        self._sub = await bus.subscribe_at_once(self.nc, self.subject, self._on_msg)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # (the connection closed: nothing to undo)
                await sub.unsubscribe()

    async def _announce(self, expected_last: int, record: int) -> None:
        notice = wire.AttemptNotice(
            token=self.token,
            expected_last=expected_last,
            record=record,
            attempt=self.attempt,
            runner=self.runner,
            job_seq=self.job_seq,
        )
        try:
            await self.nc.publish(self.subject, wire.encode(notice))
        except Exception as e:  # (the connection's buffer full while it reconnects)
            # Left out: the record still goes (retried by the writer while NATS is away),
            # and the fence stops another attempt at its next write, as without the watch.
            log.warning("session %s: attempt notice not sent: %r", self.writer.session_id, e)

    def _on_msg(self, msg: Msg) -> None:
        self.heard += 1
        try:
            notice = wire.decode(wire.AttemptNotice, msg.data)
        except (ValueError, TypeError) as e:
            log.warning("session %s: a malformed attempt notice: %s", self.writer.session_id, e)
            return
        if notice.token == self.token or self._sub is None:
            return
        if self.writer.overtaken(notice.expected_last):
            self.on_taken(
                f"attempt {notice.attempt} of runner {notice.runner or '?'} took the session "
                f"over: its records (from number {notice.record}) go after this attempt's",
                bool(self.job_seq) and notice.job_seq == self.job_seq,
            )


class JournalWriter:
    """Appends one attempt's records to a session's journal, fenced (see the module).

    ``last`` is the stream sequence of the subject's last record as this attempt knows it
    (the ``created`` record's for a fresh start, the last one read for a replay); ``seq``
    is the number of the next record. ``may_write`` says whether the attempt still holds
    its job: nothing is written once it does not (the fence catches a stale attempt only
    after another one wrote), and while publishes fail for reasons that may pass, the
    writer retries as long as it does."""

    RETRY_PAUSE = 0.5

    def __init__(
        self,
        js: JetStreamContext,
        pub: bus.Publisher,
        keys: Keyring,
        session_id: str,
        last: int,
        seq: int,
        may_write: Callable[[], bool] = lambda: True,
        limits: Limits = Limits(),
        written: tuple[int, int] = (0, 0),
        chunker: chunks.Chunker | None = None,
    ) -> None:
        """``written``: the records and bytes the journal holds already; ``chunker`` is
        given each record once the journal has it (replay chunks)."""
        self.js, self.pub, self.keys, self.session_id = js, pub, keys, session_id
        self.chunker = chunker
        self.subject = subjects.journal_subject(session_id)
        self.last, self.seq, self.may_write = last, seq, may_write
        self.limits, (self.records, self.size) = limits, written
        self.fenced = False
        self.closed = False  # its last record (an end, a retry, a wait parked) is written
        self.sending = 0  # appends out, not known to be stored or refused yet
        # Said before the first append goes out (``JournalWatch``): (expected last, record).
        self.announce: Callable[[int, int], Awaitable[None]] | None = None
        self.waited_for_room = False
        # Appends cancelled while their publish was out (a stop cancels a step's write):
        # stored or not, the server knows. (record number, data, record), until one lands.
        self._unsettled: list[tuple[int, bytes, wire.JournalRecord]] = []

    async def append(self, p: journal.Payload, final: bool = False) -> int:
        """Writes one record; returns once JetStream has it (write-ahead). Raises Fenced
        when another attempt owns the journal, RecordTooLarge for a record over the NATS
        limit, JournalFull when the journal reached its limits (``final``: the record that
        ends the session, which is always written).

        The record number is taken before publishing: a stop can cancel this while the
        publish is in flight (and already stored), and the next record must not reuse it;
        refused as out of turn, the next one finds it stored and goes after it."""
        if self.fenced:
            raise Fenced(f"session {self.session_id}: this attempt no longer owns the journal")
        if not self.may_write():  # e.g. a record about a worker the lost attempt killed
            raise self._fence("the attempt lost its job before writing")
        rec = journal.record(self.session_id, self.seq, p, timefmt.now_us())
        data = wire.encode(journal.seal(rec, self.keys))
        if not final and (
            self.records + 1 > self.limits.records or self.size + len(data) > self.limits.size
        ):
            raise JournalFull(
                f"the session's journal reached its limit ({self.limits.records:,} records or "
                f"{self.limits.size:,} bytes; AK_RUNNER__JOURNAL_MAX_RECORDS and "
                "AK_RUNNER__JOURNAL_MAX_BYTES): a session this long could not be replayed "
                "quickly; split the work, for example into child sessions"
            )
        seq = self.seq
        self.seq += 1
        self.records += 1
        self.size += len(data)
        headers = {
            subjects.HDR_MSG_ID: f"{self.session_id}:{seq}",
            subjects.HDR_EXPECTED_LAST_SUBJECT_SEQ: str(self.last),
            subjects.HDR_JOURNAL_BYTES: str(self.size),
        }
        self.sending += 1
        try:
            if self.announce is not None:  # (its first append: see JournalWatch)
                announce, self.announce = self.announce, None
                await announce(self.last, seq)
            stream_seq = await self._write(seq, rec, data, headers)
        except asyncio.CancelledError:
            # Cancelled once its first try went out (a stop cancels a step's write): in a
            # publish, in the pause before another try, or in a look at the journal after
            # one, a try may be stored all the same (the server knows).
            self._unsettled.append((seq, data, rec))
            raise
        finally:
            self.sending -= 1
        if isinstance(p, LAST_RECORDS):
            self.closed = True
        return stream_seq

    def overtaken(self, expected_last: int) -> bool:
        """Whether another attempt's record, which JetStream stores only if the subject's
        last record is then ``expected_last``, is or will be stored after this attempt's
        records: that attempt then owns the journal.

        False for a record refused for sure (it expects a record older than this attempt's
        last stored one), and while an append of this attempt's is out: JetStream stores one
        of the two, and this one's refusal fences it. Once its last record is written (an
        end, a retry, a wait parked), others may write after it."""
        if self.closed or not expected_last or expected_last < self.last:
            return False
        return expected_last > self.last or not (self.sending or self._unsettled)

    async def _write(
        self, seq: int, rec: wire.JournalRecord, data: bytes, headers: dict[str, str]
    ) -> int:
        """``append``'s tries of record ``seq``, until one is known to be stored."""
        pause = self.RETRY_PAUSE
        while True:
            try:
                ack = await self.pub.publish(self.subject, data, headers=headers)
            except MaxPayloadError:
                raise RecordTooLarge(
                    f"a {rec.kind} record of {len(data)} bytes is over the NATS message limit"
                ) from None
            except Exception as e:
                in_flight = getattr(e, "err_code", None) == bus.ERR_WRONG_LAST_IN_FLIGHT
                if bus.is_wrong_last(e) and not in_flight:
                    stream_seq = await self._settle(rec, data, "another attempt wrote the journal")
                    if stream_seq:
                        return stream_seq
                    # (a cancelled write of this attempt's landed: this one goes after it)
                    headers[subjects.HDR_EXPECTED_LAST_SUBJECT_SEQ] = str(self.last)
                    continue
                # (the stream full, or without a leader, may pass; a message in flight lands)
                if not (may_pass(e) or in_flight):
                    raise
                error = e
            else:
                if ack.get("duplicate"):  # never success: that number was someone else's
                    why = "JetStream already had this record number"
                    if stream_seq := await self._settle(rec, data, why):
                        return stream_seq
                    raise self._fence(why)
                return self._stored(seq, int(ack["seq"]), data, rec)
            # Stored or not? A retry tells: stored, it is refused as out of turn and
            # _settle finds it is ours.
            if not self.may_write():
                raise self._fence(f"the attempt lost its job while writing ({error!r})")
            if not bus.is_full(error):
                log.warning(
                    "session %s: journal write failed (%r); retrying", self.session_id, error
                )
            elif not self.waited_for_room:  # said once: every session waits alike
                self.waited_for_room = True
                log.warning(
                    "session %s: AK_JOURNAL is full; waiting for room (the store ends the "
                    "sessions holding the most of it)",
                    self.session_id,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    def located(self, stream_seq: int, created: bytes) -> None:
        """A first attempt's journal holds only its `created` record (``created``, as it
        rests), at ``stream_seq``: its bytes count (a child's inputs may be most of them)."""
        self.size += len(created)
        self._stored(0, stream_seq, created, created)

    def _stored(
        self, seq: int, stream_seq: int, data: bytes, rec: wire.JournalRecord | bytes
    ) -> int:
        self.last = stream_seq
        self._unsettled.clear()  # (each had this one's place: refused, if not stored)
        if self.chunker is not None:
            self.chunker.add(seq, stream_seq, len(data), rec)
        return stream_seq

    async def _settle(self, rec: wire.JournalRecord, data: bytes, why: str) -> int:
        """A refused append: ours all the same if the subject's last record is exactly the
        one we sent (an earlier try of this append was stored; its stream sequence is
        returned). 0 when it is a write of this attempt's that was cancelled as it went out
        (stored all the same: taken as written, so the refused one may go after it). Else
        another attempt wrote: Fenced."""
        try:
            last = await self.js.get_last_msg(subjects.STREAM_JOURNAL, self.subject)
        except NotFoundError:
            raise self._fence("its journal is gone: the session was ended") from None
        if last.seq is None:
            raise self._fence(why)
        if last.data == data:
            return self._stored(rec.seq, last.seq, data, rec)
        landed = [u for u in self._unsettled if u[1] == last.data]
        if not landed:
            raise self._fence(why)
        seq, landed_data, landed_rec = landed[0]
        self._stored(seq, last.seq, landed_data, landed_rec)
        return 0

    def _fence(self, why: str) -> Fenced:
        self.fenced = True
        if self.chunker is not None:
            self.chunker.stop("fenced")
        return Fenced(f"session {self.session_id}: {why}")
