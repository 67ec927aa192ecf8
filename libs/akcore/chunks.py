"""Replay chunks: a copy of a session's journal, many records to a message (``AK_REPLAY``).

A replay reads the whole journal, and JetStream hands it over one message per record, each
sealed field by field: for a long journal those per-record costs are most of the replay. So
each attempt also publishes the records it knows to be in the journal (read back, or
acknowledged when it wrote them) in chunks of up to ``CHUNK_RECORDS`` records or
``CHUNK_BYTES`` bytes, in the background, each chunk sealed as a whole (one AES-GCM seal,
bound to its session and place); a replay opens the chunks first and then reads only the
journal's records after them.

The journal stays the one source. A chunk says only what the journal says (its records,
each with its stream sequence there), a reader takes a chunk only where it continues the
ones before (record numbers from 0 without a gap, stream sequences rising, none past the
journal's last), and the journal's own records must go on from the last chunk's
(``journalio.read_journal``). A chunk that is missing, damaged or does not fit costs the
reader time, never a wrong replay: it reads those records from the journal instead.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from . import bus, journal, subjects, wire
from .datakey import Keyring, SealError

log = logging.getLogger(__name__)

CHUNK_RECORDS = 128
CHUNK_BYTES = 256 * 1024

# Publishes still going on after their attempt ended: held until they finish.
_PUBLISHING: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class Chunk:
    """Records ``first`` .. ``first + len(records) - 1`` of one session's journal, each with
    its stream sequence and its size as it rests there."""

    first: int
    records: list[tuple[int, int, wire.JournalRecord]]  # (stream sequence, size, record)


def _aad(session_id: str, first: int) -> bytes:
    return f"{session_id}/replay/{first}".encode()


def seal(chunk: Chunk, session_id: str, keys: Keyring) -> bytes:
    rows = [[s, n, r.seq, r.kind, r.t_us, r.data] for s, n, r in chunk.records]
    sealed = keys.seal(wire.pack(rows), _aad(session_id, chunk.first))
    return wire.pack({"first": chunk.first, "sealed": sealed})


def unseal(data: bytes, session_id: str, keys: Keyring) -> Chunk:
    """The chunk; raises ValueError (or SealError) for what is not a chunk of this session
    whose records are numbered on from its first without a gap."""
    outer = wire.unpack(data)
    if not isinstance(outer, dict):
        raise ValueError("not a map")
    first, sealed = outer.get("first"), outer.get("sealed")
    if type(first) is not int or first < 0 or not isinstance(sealed, bytes):
        raise ValueError("no record number or no sealed records")
    rows = wire.unpack(keys.open(sealed, _aad(session_id, first)))
    if not isinstance(rows, list) or not rows:
        raise ValueError("no records")
    records: list[tuple[int, int, wire.JournalRecord]] = []
    for n, row in enumerate(rows, start=first):
        if not (isinstance(row, list) and len(row) == 6):
            raise ValueError(f"record {n} is not a record")
        stream_seq, size, seq, kind, t_us, data = row
        ints = (stream_seq, size, seq, t_us)
        if any(type(x) is not int for x in ints) or seq != n or not isinstance(data, dict):
            raise ValueError(f"record {n} is not record {n} of the journal")
        rec = wire.JournalRecord(session_id, seq, str(kind), t_us, data)
        journal.kind_of(rec)  # (a known kind, or MalformedRecord)
        records.append((stream_seq, size, rec))
    return Chunk(first, records)


def joined(found: list[Chunk], last: int) -> list[tuple[int, int, wire.JournalRecord]]:
    """The records that chunks hold from record 0 on without a gap, in order: at each
    record number, the first chunk found that starts there and whose stream sequences rise
    from the ones before and do not go past ``last`` (the journal's last). Any two chunks
    that do so hold the same records: what the journal holds there."""
    by_first: dict[int, list[Chunk]] = {}
    for chunk in found:
        by_first.setdefault(chunk.first, []).append(chunk)
    out: list[tuple[int, int, wire.JournalRecord]] = []
    while candidates := by_first.get(len(out)):
        prev = out[-1][0] if out else 0
        for chunk in candidates:
            seqs = [s for s, _, _ in chunk.records]
            if seqs[-1] <= last and all(b > a for a, b in zip([prev, *seqs], seqs, strict=False)):
                out.extend(chunk.records)
                break
        else:
            break
    return out


class Chunker:
    """Turns the records one attempt knows to be in its journal into chunks.

    ``next_seq``: the record number the next chunk starts at (where the chunks read back
    ended); ``known``: the records from there on, as (stream sequence, size, record). A
    record that does not come next (a gap) stops it for the attempt: its chunks would no
    longer join."""

    def __init__(
        self,
        pub: bus.Publisher,
        keys: Keyring,
        session_id: str,
        next_seq: int = 0,
        known: list[tuple[int, int, wire.JournalRecord]] | None = None,
    ) -> None:
        self.pub, self.keys, self.session_id = pub, keys, session_id
        self.subject = subjects.replay_subject(session_id)
        self.next_seq = next_seq
        # (stream sequence, size, the record, or the record as it rests: opened when sent)
        self.pending: list[tuple[int, int, wire.JournalRecord | bytes]] = []
        self.size = 0
        self.off = False
        self._last: asyncio.Task[None] | None = None
        for stream_seq, size, rec in known or ():
            self.add(rec.seq, stream_seq, size, rec)

    def add(self, seq: int, stream_seq: int, size: int, rec: wire.JournalRecord | bytes) -> None:
        """Record ``seq`` is in the journal at ``stream_seq``, ``size`` bytes there; ``rec``
        is the record, or the record as it rests (a first attempt's `created`: opened only
        if it goes into a chunk)."""
        if self.off:
            return
        if seq != self.next_seq + len(self.pending):
            self.stop(f"record {seq} came where {self.next_seq + len(self.pending)} was due")
            return
        if self.pending and self.size + size > CHUNK_BYTES:
            self._flush()
        self.pending.append((stream_seq, size, rec))
        self.size += size
        if len(self.pending) >= CHUNK_RECORDS or self.size >= CHUNK_BYTES:
            self._flush()

    def stop(self, why: str) -> None:
        if not self.off:
            log.debug("session %s: no more replay chunks: %s", self.session_id, why)
        self.off = True
        self.pending.clear()

    def _flush(self) -> None:
        try:
            records = [(s, n, self._opened(r)) for s, n, r in self.pending]
        except (ValueError, SealError) as e:
            self.stop(f"a record cannot be opened: {e}")
            return
        chunk = Chunk(self.next_seq, records)
        self.next_seq += len(self.pending)
        self.pending, self.size = [], 0
        task = asyncio.create_task(self._publish(self._last, chunk))
        self._last = task
        _PUBLISHING.add(task)
        task.add_done_callback(_PUBLISHING.discard)

    def _opened(self, rec: wire.JournalRecord | bytes) -> wire.JournalRecord:
        if isinstance(rec, bytes):
            return journal.unseal(wire.decode(wire.JournalRecord, rec), self.keys)
        return rec

    async def _publish(self, before: asyncio.Task[None] | None, chunk: Chunk) -> None:
        """After the chunk before it (readers take chunks in any order, but a failure
        stops the ones after it)."""
        if before is not None:
            await asyncio.gather(before, return_exceptions=True)
        if self.off:
            return
        data = seal(chunk, self.session_id, self.keys)
        msg_id = f"{self.session_id}:{chunk.first}:{len(chunk.records)}"
        try:
            await self.pub.publish(self.subject, data, headers={subjects.HDR_MSG_ID: msg_id})
        except Exception as e:  # (a full stream, NATS away): replays read the journal
            self.stop(f"a chunk was not stored: {e!r}")
