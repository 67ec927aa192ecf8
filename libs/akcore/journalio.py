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
import logging
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from . import bus, journal, subjects, timefmt, wire
from .bus import may_pass
from .datakey import Keyring

log = logging.getLogger(__name__)

ERR_WRONG_LAST_SEQUENCE = 10071  # JetStream: the subject's last message is not the expected


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


async def created_seq(js: JetStreamContext, session_id: str) -> int:
    """The stream sequence of the session's `created` record, its journal's only record.

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
            return raw.seq
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
    is none) and how many bytes they take."""

    records: list[wire.JournalRecord]
    last: int
    size: int


async def read_journal(
    js: JetStreamContext, session_id: str, keys: Keyring, timeout: float = 30.0
) -> Journal:
    """Every record of one session, in order and unsealed: an ordered consumer read to the
    subject's last message. Raises MalformedRecord for a record that cannot be decoded or
    does not unseal."""
    subject = subjects.journal_subject(session_id)
    try:
        last = await js.get_last_msg(subjects.STREAM_JOURNAL, subject)
    except NotFoundError:
        return Journal([], 0, 0)
    out: list[wire.JournalRecord] = []
    read_all = asyncio.Event()
    failed: list[Exception] = []
    last_seq = last.seq or 0
    read_to = [0, 0]  # the stream sequence of the last record read, the bytes read

    # A callback, not next_msg: next_msg starts two tasks per message, which was most of
    # the time a replay took to read a long journal.
    async def on_msg(msg: Msg) -> None:
        if read_all.is_set():
            return
        try:
            read_to[0] = msg.metadata.sequence.stream
            read_to[1] += len(msg.data)
            out.append(journal.unseal(wire.decode(wire.JournalRecord, msg.data), keys))
            if read_to[0] >= last_seq or msg.metadata.num_pending == 0:
                read_all.set()
        except Exception as e:  # a malformed record: the caller hears of it
            failed.append(journal.MalformedRecord(f"record at {read_to[0]}: {e}"))
            read_all.set()

    sub = await js.subscribe(
        subject,
        stream=subjects.STREAM_JOURNAL,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=on_msg,
    )
    try:
        async with asyncio.timeout(timeout):
            await read_all.wait()
        if failed:
            raise failed[0]
        return Journal(out, read_to[0], read_to[1])
    finally:
        await sub.unsubscribe()


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
    ) -> None:
        """``written``: the records and bytes the journal holds already."""
        self.js, self.pub, self.keys, self.session_id = js, pub, keys, session_id
        self.subject = subjects.journal_subject(session_id)
        self.last, self.seq, self.may_write = last, seq, may_write
        self.limits, (self.records, self.size) = limits, written
        self.fenced = False

    async def append(self, p: journal.Payload, final: bool = False) -> int:
        """Writes one record; returns once JetStream has it (write-ahead). Raises Fenced
        when another attempt owns the journal, RecordTooLarge for a record over the NATS
        limit, JournalFull when the journal reached its limits (``final``: the record that
        ends the session, which is always written).

        The record number is taken before publishing: a stop can cancel this while the
        publish is in flight (and already stored), and the next record must not reuse it."""
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
        }
        pause = self.RETRY_PAUSE
        while True:
            try:
                ack = await self.pub.publish(self.subject, data, headers=headers)
            except MaxPayloadError:
                raise RecordTooLarge(
                    f"a {rec.kind} record of {len(data)} bytes is over the NATS message limit"
                ) from None
            except Exception as e:
                if isinstance(e, APIError) and e.err_code == ERR_WRONG_LAST_SEQUENCE:
                    return await self._settle(data, "another attempt wrote the journal")
                if not may_pass(e):  # (the stream full, or without a leader, may pass)
                    raise
                error = e
            else:
                if ack.get("duplicate"):  # never success: that number was someone else's
                    return await self._settle(data, "JetStream already had this record number")
                self.last = int(ack["seq"])
                return self.last
            # Stored or not? A retry tells: stored, it is refused as out of turn and
            # _settle finds it is ours.
            if not self.may_write():
                raise self._fence(f"the attempt lost its job while writing ({error!r})")
            log.warning("session %s: journal write failed (%r); retrying", self.session_id, error)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _settle(self, data: bytes, why: str) -> int:
        """A refused append: ours all the same if the subject's last record is exactly the
        one we sent (an earlier try of this append was stored), else we are fenced."""
        try:
            last = await self.js.get_last_msg(subjects.STREAM_JOURNAL, self.subject)
        except NotFoundError:
            raise self._fence(f"{why} (the journal is gone: the session ended)") from None
        if last.data == data and last.seq is not None:
            self.last = last.seq
            return self.last
        raise self._fence(why)

    def _fence(self, why: str) -> Fenced:
        self.fenced = True
        return Fenced(f"session {self.session_id}: {why}")
