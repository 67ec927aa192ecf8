"""Bounded storage: SQL pruned by the retention settings, and ended sessions' journals and
inboxes purged from JetStream once the store has their records (their replay chunks at the
next sweep)."""

from __future__ import annotations

import asyncio
from typing import Any

import ak_store.service as store_service
import pytest
from ak_store.cleanup import Purger, prune
from ak_store.db import open_engine
from ak_store.materialize import apply_events, apply_records, apply_spans
from ak_store.service import run as run_store
from akcore import bus, chunks, ids, journal, subjects, wire
from akcore.config import Settings
from akcore.datakey import Keyring
from akcore.errors import NotFound
from akcore.retention import Retention
from cryptography.fernet import Fernet
from sqlalchemy import Engine, text

from .conftest import running
from .helpers import eventually

KEYS = Keyring([Fernet.generate_key()])
SECOND = 1_000_000
NOW = 1_800_000_000 * SECOND


def _session(engine: Engine, sid: str, ended_us: int | None, t0: int) -> None:
    recs = [wire.JournalRecord(sid, 0, wire.CREATED, t0, {"project_id": "prj_1"})]
    recs.append(wire.JournalRecord(sid, 1, wire.PRINT, t0 + 1, {"text": "hi", "n": 1}))
    if ended_us is not None:
        recs.append(wire.JournalRecord(sid, 2, wire.ENDED, ended_us, {"state": wire.COMPLETED}))
    with engine.begin() as conn:
        apply_records(conn, [journal.seal(r, KEYS) for r in recs], KEYS)
    apply_spans(
        engine,
        [
            {
                "trace_id": f"t{sid}",
                "span_id": "s1",
                "name": "session",
                "start_us": t0,
                "end_us": t0 + 1,
                "attributes": {"ak.session_id": sid},
            }
        ],
    )


def _count(engine: Engine, table: str, where: str = "1=1") -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}")).scalar_one())


def test_prune_by_age_and_by_count(db_dsn: str) -> None:
    engine = open_engine(db_dsn)
    try:
        day = 24 * 3600 * SECOND
        # Ended 40, 20, 10 and 5 days ago; one still running (started 60 days ago).
        for i, age in enumerate((40, 20, 10, 5)):
            _session(engine, f"ses_{i}", NOW - age * day, NOW - age * day - SECOND)
        _session(engine, "ses_live", None, NOW - 60 * day)
        with engine.begin() as conn:
            apply_events(
                conn,
                [
                    wire.Event(f"evt_{age}", "prj_1", "trg_1", "post", {}, {}, NOW - age * day)
                    for age in (45, 29, 3, 2, 1)
                ],
                Keyring([Fernet.generate_key()]),
            )
        with engine.begin() as conn:
            for age in (45, 1):
                conn.execute(
                    text(
                        "INSERT INTO dispatch_notes (event_id, source, note, created_us) "
                        "VALUES (:e, 'trg_1', 'over budget', :t)"
                    ),
                    {"e": f"evt_{age}", "t": NOW - age * day},
                )
        month = 30 * 24 * 3600.0
        keep = Retention(sessions_age=month, max_sessions=2, events_age=month, max_events=3)
        done = prune(engine, keep, NOW)
        # 40 days: too old; 20 days: beyond the last two kept; the live one stays.
        assert done == {"sessions": 2, "events": 2}
        with engine.connect() as conn:
            kept = {r[0] for r in conn.execute(text("SELECT session_id FROM session"))}
            events = {r[0] for r in conn.execute(text("SELECT event_id FROM events"))}
        assert kept == {"ses_2", "ses_3", "ses_live"}
        assert events == {"evt_3", "evt_2", "evt_1"}
        with engine.connect() as conn:
            notes = {r[0] for r in conn.execute(text("SELECT event_id FROM dispatch_notes"))}
        assert notes == {"evt_1"}  # the note of a pruned event went with it
        assert _count(engine, "sessionrecord", "session_id IN ('ses_0', 'ses_1')") == 0
        assert _count(engine, "spans", "session_id IN ('ses_0', 'ses_1')") == 0
        assert _count(engine, "sessionrecord") == 3 + 3 + 2  # two ended sessions, the live one
        assert prune(engine, keep, NOW) == {"sessions": 0, "events": 0}  # nothing more to do
    finally:
        engine.dispose()


async def test_an_ended_sessions_journal_and_inbox_are_purged(settings: Settings) -> None:
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        pub = bus.publisher(nc)
        sid, live = ids.new_id("ses"), ids.new_id("ses")
        for s in (sid, live):
            created = wire.JournalRecord(s, 0, wire.CREATED, 1, {"project_id": "prj_1"})
            await pub.publish(subjects.journal_subject(s), wire.encode(created))
            signal = wire.InboxMessage(kind=wire.INBOX_SIGNAL, name="x")
            await pub.publish(subjects.inbox_subject(s), wire.encode(signal))
            chunk = chunks.seal(chunks.Chunk(0, [(1, 1, created)]), s, KEYS)  # (replay chunk)
            await pub.publish(subjects.replay_subject(s), chunk)
        ended = wire.JournalRecord(sid, 1, wire.ENDED, 2, {"state": wire.COMPLETED})
        await pub.publish(subjects.journal_subject(sid), wire.encode(ended))

        async def purged() -> bool:
            return await _messages(js, sid) == (0, 0)

        await eventually(purged, timeout=20)  # the store's own fast path
        assert await _messages(js, live) == (1, 1)  # a live session keeps both
        # A message that reaches an ended session's inbox later goes at the next sweep.
        late = wire.InboxMessage(kind=wire.INBOX_SIGNAL, name="late")
        await pub.publish(subjects.inbox_subject(sid), wire.encode(late))
        assert await _messages(js, sid) == (0, 1)

        async def sql(fn: Any, *args: Any) -> Any:
            return await asyncio.to_thread(fn, *args)

        assert await _chunks(js, sid) == 1  # replay chunks go at the sweep only
        engine = open_engine(settings.db_dsn, migrate_schema=False)
        try:
            assert await Purger(js, engine, sql).sweep() == 2  # the late inbox, the chunks
        finally:
            engine.dispose()
        assert await _messages(js, sid) == (0, 0)
        assert await _chunks(js, sid) == 0
        assert await _messages(js, live) == (1, 1)
        assert await _chunks(js, live) == 1
        await nc.close()


async def _messages(js: Any, sid: str) -> tuple[int, int]:
    """Messages of the session in its journal and in its inbox."""
    out = []
    for stream, subject in (
        (subjects.STREAM_JOURNAL, subjects.journal_subject(sid)),
        (subjects.STREAM_INBOX, subjects.inbox_subject(sid)),
    ):
        info = await js.stream_info(stream, subjects_filter=subject)
        out.append(sum((info.state.subjects or {}).values()))
    return out[0], out[1]


async def _chunks(js: Any, sid: str) -> int:
    subject = subjects.replay_subject(sid)
    info = await js.stream_info(subjects.STREAM_REPLAY, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_a_record_the_store_cannot_keep_ends_its_session(settings: Settings) -> None:
    """Refused again and again while the database works, a record is set aside (it must
    not hold up the others) and its session is told to end in ERROR."""
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        pub = bus.publisher(nc)
        sid, other = ids.new_id("ses"), ids.new_id("ses")
        created = wire.JournalRecord(sid, 0, wire.CREATED, 1, {"project_id": "prj_1"})
        await pub.publish(subjects.journal_subject(sid), wire.encode(created))
        bad = wire.JournalRecord(sid, 1, wire.PRINT, 2**70, {"text": "when?", "n": 1})
        await pub.publish(subjects.journal_subject(sid), wire.encode(bad))  # t_us: no column
        created = wire.JournalRecord(other, 0, wire.CREATED, 1, {"project_id": "prj_1"})
        await pub.publish(subjects.journal_subject(other), wire.encode(created))

        async def told() -> wire.InboxMessage | None:
            try:
                msg = await js.get_last_msg(subjects.STREAM_INBOX, subjects.inbox_subject(sid))
            except Exception:
                return None
            return wire.decode(wire.InboxMessage, msg.data or b"")

        stop = await eventually(told, timeout=60)
        assert stop.kind == wire.INBOX_STOP and stop.failed
        assert stop.reason.startswith("error: the store could not keep record 1 (print) of this")
        got = await bus.store_call(nc, "session.get", {"session": other})
        assert got["state"] == "CREATED"  # the records after it were applied
        await nc.close()


async def test_a_session_whose_end_the_store_cannot_keep_ends_in_sql(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its `ended` record set aside, a session that had ended stayed RUNNING in SQL for
    ever (the stop the store sends reaches no one): it now ends in ERROR there, saying so."""
    monkeypatch.setattr(store_service, "MAX_APPLY_ATTEMPTS", 2)
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        sid = ids.new_id("ses")
        for rec in (
            wire.JournalRecord(sid, 0, wire.CREATED, 1, {"project_id": "prj_1"}),
            wire.JournalRecord(sid, 1, wire.STARTED, 2, {"attempt": 1}),
            wire.JournalRecord(sid, 2, wire.ENDED, 2**70, {"state": wire.COMPLETED}),
        ):
            await js.publish(subjects.journal_subject(sid), wire.encode(rec))

        async def ended() -> dict[str, Any] | None:
            try:
                got: dict[str, Any] = await bus.store_call(nc, "session.get", {"session": sid})
            except NotFound:  # (not applied yet)
                return None
            return got if got["state"] not in ("CREATED", "RUNNING") else None

        got = await eventually(ended, timeout=60)
        assert got["state"] == "ERROR"
        assert got["error"].startswith("error: the store could not keep this session's end (")
        await nc.close()
