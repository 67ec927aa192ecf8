"""Keeps storage bounded: an ended session's journal and inbox subjects are purged once the
store has its records (and its replay chunks, ``akcore.chunks``, by the sweep), and SQL
keeps ended sessions and events only as long as the retention settings say
(``akcore.retention``).

A journal subject is purged only when the journal consumer's ack floor has passed its last
record: every store has then applied and acknowledged all of that session's records, so
nothing can be redelivered from it. Purges come from two places: the fast path (the
``ended`` records this store applied, checked every second) and a sweep of the streams'
subjects (every minute) that catches what the fast path missed (a store that restarted,
records applied by another store) and inboxes written after their session ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from akcore import ids, subjects, timefmt, waitfor, wire
from akcore.retention import Retention
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import Connection, Engine, bindparam, delete, func, select

from .models import Delivery, DispatchNote, EventRow, Session, SessionRecord, SpanRow

log = logging.getLogger(__name__)

_SESSIONS = Session.__table__  # type: ignore[attr-defined]
_RECORDS = SessionRecord.__table__  # type: ignore[attr-defined]
_SPANS = SpanRow.__table__  # type: ignore[attr-defined]
_EVENTS = EventRow.__table__  # type: ignore[attr-defined]
_NOTES = DispatchNote.__table__  # type: ignore[attr-defined]
_DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]

CHUNK = 2000  # rows deleted per transaction
ORPHAN_INBOX_SECONDS = 3600  # an inbox of a session the store never heard of, after this
CHILD_GRACE = 300  # seconds a child session's journal outlives its end (see _purge_ready)


class Purger:
    """Purges ended sessions' journals and inboxes (see the module)."""

    FAST_EVERY = 1.0
    SWEEP_EVERY = 60.0
    CONCURRENCY = 32

    def __init__(self, js: JetStreamContext, engine: Engine, sql: Any) -> None:
        """``sql(fn, *args)`` runs ``fn(*args)`` on the store's SQL threads."""
        self.js, self.engine, self.sql = js, engine, sql
        # (stream seq of its `ended`, session, whether its inbox may hold messages)
        self._ended: list[tuple[int, str, bool]] = []

    def ended(self, session_id: str, stream_seq: int, inbox: bool = True) -> None:
        """This store committed ``session_id``'s ``ended`` record (at ``stream_seq``);
        ``inbox``: its inbox may hold messages (else only the sweep looks at it)."""
        self._ended.append((stream_seq, session_id, inbox))

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self.SWEEP_EVERY / 4
        while not stop.is_set():
            await waitfor.pause(stop, self.FAST_EVERY)
            try:
                if self._ended:
                    await self._purge_ready()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.SWEEP_EVERY
                    await self.sweep()
            except Exception as e:  # NATS or SQL away: next time
                log.warning("purging ended sessions: %r", e)

    async def _purge_ready(self) -> None:
        floor = await ack_floor(self.js)
        ready = [(sid, inbox) for seq, sid, inbox in self._ended if seq <= floor]
        self._ended = [e for e in self._ended if e[0] > floor]
        # A child's journal stays a while: if its runner stopped between its end and telling
        # its parent, the next attempt reads the end there and tells the parent (the sweep
        # purges it later).
        found = await self.sql(sessions, self.engine, [sid for sid, _ in ready])
        children = {sid for sid, (_, parent, *_) in found.items() if parent}
        journals = [subjects.journal_subject(sid) for sid, _ in ready if sid not in children]
        await self._purge(journals, subjects.STREAM_JOURNAL)
        inboxes = [subjects.inbox_subject(sid) for sid, inbox in ready if inbox]
        await self._purge(inboxes, subjects.STREAM_INBOX)

    async def _purge(self, names: list[str], stream: str) -> None:
        for i in range(0, len(names), self.CONCURRENCY):
            chunk = names[i : i + self.CONCURRENCY]
            await asyncio.gather(*(self.js.purge_stream(stream, subject=s) for s in chunk))

    async def sweep(self) -> int:
        """Purges what the fast path missed; returns how many subjects it purged."""
        journals = await session_subjects(self.js, subjects.STREAM_JOURNAL)
        inboxes = await session_subjects(self.js, subjects.STREAM_INBOX)
        replays = await session_subjects(self.js, subjects.STREAM_REPLAY)
        found = await self.sql(sessions, self.engine, [*journals, *inboxes, *replays])
        floor = await ack_floor(self.js)
        now_us = timefmt.now_us()
        done = []
        for sid in journals:
            state, parent, ended_us, _ = found.get(sid, ("", "", 0, ""))
            if state not in wire.FINAL_STATES or await self._last_seq(sid) > floor:
                continue
            if parent and ended_us > now_us - CHILD_GRACE * 1_000_000:
                continue  # (see _purge_ready)
            done.append(subjects.journal_subject(sid))
        cutoff_ms = now_us // 1000 - ORPHAN_INBOX_SECONDS * 1000
        for sid in inboxes:
            state = found.get(sid, (None, "", 0))[0]
            if state in wire.FINAL_STATES or (state is None and ids.time_ms(sid) < cutoff_ms):
                done.append(subjects.inbox_subject(sid))
        purging = {s for s in done if ".journal." in s}
        for sid in replays:  # with or after the journal (a replay reads them before it)
            if sid in journals and subjects.journal_subject(sid) not in purging:
                continue
            state = found.get(sid, (None, "", 0))[0]
            if state in wire.FINAL_STATES or (state is None and ids.time_ms(sid) < cutoff_ms):
                done.append(subjects.replay_subject(sid))
        await self._purge([s for s in done if ".journal." in s], subjects.STREAM_JOURNAL)
        await self._purge([s for s in done if ".inbox." in s], subjects.STREAM_INBOX)
        await self._purge([s for s in done if ".replay." in s], subjects.STREAM_REPLAY)
        if done:
            log.info("purged %d subjects of ended sessions", len(done))
        return len(done)

    async def _last_seq(self, session_id: str) -> int:
        try:
            msg = await self.js.get_last_msg(
                subjects.STREAM_JOURNAL, subjects.journal_subject(session_id)
            )
        except NotFoundError:
            return 0
        return msg.seq or 0


async def ack_floor(js: JetStreamContext) -> int:
    """The stream sequence up to which the store has applied (and acked) every record."""
    info = await js.consumer_info(subjects.STREAM_JOURNAL, subjects.CONSUMER_STORE_JOURNAL)
    return info.ack_floor.stream_seq if info.ack_floor else 0


async def session_subjects(js: JetStreamContext, stream: str) -> list[str]:
    """The session ids that have messages in ``stream``."""
    return list(await subject_counts(js, stream))


async def subject_counts(js: JetStreamContext, stream: str) -> dict[str, int]:
    """How many messages each session has in ``stream`` (its subjects, page by page)."""
    prefix = len(SUBJECT_OF[stream](""))
    nc = js._nc  # the JetStream API pages the subjects; nats-py does not
    found: dict[str, int] = {}
    while True:
        req = json.dumps({"subjects_filter": ">", "offset": len(found)}).encode()
        msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", req, timeout=10)
        info = json.loads(msg.data)
        page = (info.get("state") or {}).get("subjects") or {}
        found.update((s[prefix:], int(n)) for s, n in page.items())
        if not page or len(found) >= int(info.get("total") or 0):
            return found


# A session's subject in each of the streams that hold its messages while it lives.
SUBJECT_OF: dict[str, Callable[[str], str]] = {
    subjects.STREAM_JOURNAL: subjects.journal_subject,
    subjects.STREAM_INBOX: subjects.inbox_subject,
    subjects.STREAM_REPLAY: subjects.replay_subject,
}


def sessions(engine: Engine, session_ids: list[str]) -> dict[str, tuple[str, str, int, str]]:
    """(state, parent session id, last change, project) of those of the sessions the store
    has."""
    if not session_ids:
        return {}
    c = _SESSIONS.c
    q = select(c.session_id, c.state, c.parent_session_id, c.updated_us, c.project_id).where(
        c.session_id.in_(bindparam("ids", expanding=True))
    )
    with engine.connect() as conn:
        rows = conn.execute(q, {"ids": session_ids})
        return {
            r.session_id: (r.state, r.parent_session_id, r.updated_us, r.project_id) for r in rows
        }


def prune(engine: Engine, keep: Retention, now_us: int | None = None) -> dict[str, int]:
    """Deletes ended sessions (with their records and spans) and events past retention:
    older than their age limit, or beyond their count (the oldest first), a chunk per
    transaction. Returns how many of each it deleted."""
    now_us = now_us or timefmt.now_us()
    sessions_cut = now_us - int(keep.sessions_age * 1e6)
    events_cut = now_us - int(keep.events_age * 1e6)
    ended = _SESSIONS.c.state.in_(wire.FINAL_STATES)
    n_sessions = _prune(
        engine,
        select(_SESSIONS.c.session_id).where(ended).order_by(_SESSIONS.c.updated_us),
        _SESSIONS.c.updated_us < sessions_cut,
        select(func.count()).where(ended),
        keep.max_sessions,
        _delete_sessions,
    )
    n_events = _prune(
        engine,
        select(_EVENTS.c.seq).order_by(_EVENTS.c.seq),
        _EVENTS.c.created_us < events_cut,
        select(func.count()).select_from(_EVENTS),
        keep.max_events,
        _delete_events,
    )
    with engine.begin() as conn:
        # spans of no session (a webhook that started none), notes of events gone by age
        conn.execute(
            delete(_SPANS).where(_SPANS.c.session_id == "", _SPANS.c.start_us < sessions_cut)
        )
        conn.execute(delete(_NOTES).where(_NOTES.c.created_us < events_cut))
        # providers' deliveries are remembered as long as the events they became
        conn.execute(delete(_DELIVERIES).where(_DELIVERIES.c.created_us < events_cut))
    return {"sessions": n_sessions, "events": n_events}


def _prune(
    engine: Engine,
    oldest: Any,
    too_old: Any,
    count: Any,
    limit: int,
    remove: Callable[[Connection, list[Any]], None],
) -> int:
    """Removes the rows ``oldest`` selects (oldest first) that are ``too_old``, then the
    oldest beyond ``limit`` of ``count``; returns how many."""
    removed = _in_chunks(engine, lambda conn: oldest.where(too_old).limit(CHUNK), remove)
    return removed + _in_chunks(
        engine, lambda conn: oldest.limit(_over(conn, count, limit)), remove
    )


def _over(conn: Connection, count: Any, limit: int) -> int:
    """How many rows to delete now (at most a chunk) to bring ``count`` down to ``limit``."""
    return max(0, min(int(conn.execute(count).scalar_one()) - limit, CHUNK))


def _in_chunks(
    engine: Engine,
    query: Callable[[Connection], Any],
    remove: Callable[[Connection, list[Any]], None],
) -> int:
    """Deletes what ``query`` selects, a transaction per chunk, until it selects less."""
    total = 0
    while True:
        with engine.begin() as conn:
            keys = list(conn.execute(query(conn)).scalars())
            if keys:
                remove(conn, keys)
        total += len(keys)
        if len(keys) < CHUNK:
            return total


def _delete_sessions(conn: Connection, sids: list[str]) -> None:
    for table in (_RECORDS, _SPANS):
        conn.execute(delete(table).where(table.c.session_id.in_(sids)))
    conn.execute(delete(_SESSIONS).where(_SESSIONS.c.session_id.in_(sids)))


def _delete_events(conn: Connection, seqs: list[int]) -> None:
    gone = select(_EVENTS.c.event_id).where(_EVENTS.c.seq.in_(seqs))
    conn.execute(delete(_NOTES).where(_NOTES.c.event_id.in_(gone)))
    conn.execute(delete(_EVENTS).where(_EVENTS.c.seq.in_(seqs)))
