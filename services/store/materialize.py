"""Turns journal records and events from JetStream into SQL rows (idempotent per record)."""

from __future__ import annotations

import functools
from typing import Any

from akcore import eventdata, journal, wire
from akcore.datakey import Keyring
from sqlalchemy import Connection, Engine, Table, bindparam, delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .models import Deployment, EventRow, Session, SessionRecord, SpanRow, Subscription
from .sealed import seal_column

_JOURNAL_LOCK = 0x616B5F6A  # "ak_j"


def insert_new(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Inserts rows, skipping those that clash with a row already kept (a unique key): each
    message is applied at least once, so the same row may come again."""
    if rows:
        conn.execute(_insert_new_stmt(conn.dialect.name, table), rows)


@functools.cache
def _insert_new_stmt(dialect: str, table: Table) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(table).on_conflict_do_nothing()


_SESSIONS: Table = Session.__table__  # type: ignore[attr-defined]
_RECORDS: Table = SessionRecord.__table__  # type: ignore[attr-defined]
_DEPLOYMENTS: Table = Deployment.__table__  # type: ignore[attr-defined]
_SUBSCRIPTIONS: Table = Subscription.__table__  # type: ignore[attr-defined]

# A session starts running only once (a redelivered job journals `started` again); its end
# is whatever its last `ended` record says.
_START = (
    update(_SESSIONS)
    .where(_SESSIONS.c.session_id == bindparam("sid"), _SESSIONS.c.state == "CREATED")
    .values(state="RUNNING", updated_us=bindparam("t_us"))
)
_END = (
    update(_SESSIONS)
    .where(_SESSIONS.c.session_id == bindparam("sid"))
    .values(
        state=bindparam("state"),
        error=bindparam("error"),
        traceback=bindparam("traceback"),
        updated_us=bindparam("t_us"),
    )
)


def apply_records(conn: Connection, recs: list[wire.JournalRecord], keys: Keyring) -> None:
    """Applies journal records in order (the caller commits). Applying a record twice
    changes nothing. Records stay sealed as they come (``journal.seal``), less their pickles;
    a session's error is unsealed from its end and sealed again for the sessions table.
    Several stores apply the journal side by side, so a session's records
    may come out of order: a session created after its later records catches up with them.

    Plain SQL statements, a handful per batch whatever its size: this runs for every
    session, several times, and ORM objects cost more than the database does."""
    # Stores apply their batches one after another: a batch must see what the batch before
    # it committed, so it takes the database's turn before it reads anything.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _JOURNAL_LOCK})
    elif conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, held until commit
    created = [r for r in recs if r.kind == wire.CREATED]
    # Records of these sessions that another store applied before they existed here (read
    # before this batch's own records are kept).
    steps = _later_records(conn, [r.session_id for r in created]) if created else []
    insert_new(conn, _SESSIONS, [_created(r) for r in created])
    steps += [(r.session_id, r.seq, r.kind, r.data, r.t_us) for r in recs]
    starts = [{"sid": sid, "t_us": t} for sid, _, kind, _, t in steps if kind == wire.STARTED]
    ends = [_end(sid, seq, d, t, keys) for sid, seq, kind, d, t in steps if kind == wire.ENDED]
    # Starts before ends: a start only moves a CREATED session, so the order between
    # sessions does not matter, and within one session the journal has them in this order.
    if starts:
        conn.execute(_START, starts)
    if ends:
        conn.execute(_END, ends)
        ended = {e["sid"] for e in ends}
        retire_drained(conn, ended)
        # (the runner removes them too, but not while the store is away: they would count
        # toward the trigger's limit and be judged for every event, for nobody)
        conn.execute(delete(_SUBSCRIPTIONS).where(_SUBSCRIPTIONS.c.session_id.in_(ended)))
    insert_new(
        conn,
        _RECORDS,
        [
            {
                "session_id": r.session_id,
                "seq": r.seq,
                "kind": r.kind,
                "t_us": r.t_us,
                "data": {
                    k: v
                    for k, v in r.data.items()
                    if not isinstance(v, bytes) and not (r.kind == wire.CREATED and k in _INPUTS)
                },
            }
            for r in recs
        ],
    )


def _end(sid: str, seq: int, data: dict[str, Any], t_us: int, keys: Keyring) -> dict[str, Any]:
    """The sessions table's end of a session from its `ended` record (raises SealError)."""
    opened = journal.unseal_fields(sid, seq, data.get(journal.SEALED), keys)
    return {
        "sid": sid,
        "state": data.get("state", wire.ERROR),
        "error": seal_column(keys, sid, "error", opened.get("error") or ""),
        "traceback": seal_column(keys, sid, "traceback", opened.get("traceback") or ""),
        "t_us": t_us,
    }


_INPUTS = ("inputs", journal.SEALED)  # kept in the sessions table, not with the records

_LATER = (
    select(_RECORDS.c.session_id, _RECORDS.c.seq, _RECORDS.c.kind, _RECORDS.c.data, _RECORDS.c.t_us)
    .where(
        _RECORDS.c.session_id.in_(bindparam("ids", expanding=True)),
        _RECORDS.c.kind.in_((wire.STARTED, wire.ENDED)),
    )
    .order_by(_RECORDS.c.seq)
)


def _later_records(
    conn: Connection, session_ids: list[str]
) -> list[tuple[str, int, str, dict[str, Any], int]]:
    """Starts and ends of these sessions already kept, in journal order."""
    rows = conn.execute(_LATER, {"ids": session_ids})
    return [(r.session_id, r.seq, r.kind, r.data, r.t_us) for r in rows]


def _created(rec: wire.JournalRecord) -> dict[str, Any]:
    d = rec.data
    return {
        "session_id": rec.session_id,
        "project_id": d.get("project_id", ""),
        "deployment_id": d.get("deployment_id", ""),
        "build_id": d.get("build_id", ""),
        "trigger_id": d.get("trigger_id", ""),
        "event_id": d.get("event_id") or "",
        "entrypoint": d.get("entrypoint", ""),
        "parent_session_id": d.get("parent_session_id") or "",
        # kept sealed as the record has them (see sealed.open_session)
        "inputs": {journal.SEALED: d[journal.SEALED]} if journal.SEALED in d else {},
        "is_durable": bool(d.get("is_durable", True)),
        "state": "CREATED",
        "error": "",
        "traceback": "",
        "created_us": rec.t_us,
        "updated_us": rec.t_us,
    }


_DRAINING = select(_DEPLOYMENTS.c.deployment_id).where(
    _DEPLOYMENTS.c.state == "DRAINING",
    _DEPLOYMENTS.c.deployment_id.in_(
        select(_SESSIONS.c.deployment_id).where(
            _SESSIONS.c.session_id.in_(bindparam("ids", expanding=True))
        )
    ),
)
_LIVE = (
    select(_SESSIONS.c.session_id)
    .where(
        _SESSIONS.c.deployment_id == bindparam("dep"), _SESSIONS.c.state.not_in(wire.FINAL_STATES)
    )
    .limit(1)
)
_RETIRE = (
    update(_DEPLOYMENTS)
    .where(_DEPLOYMENTS.c.deployment_id == bindparam("dep"))
    .values(state="INACTIVE")
)


def retire_drained(conn: Connection, ended: set[str]) -> None:
    """A draining deployment becomes inactive when its last session has ended."""
    for dep in list(conn.execute(_DRAINING, {"ids": list(ended)}).scalars()):
        if conn.execute(_LIVE, {"dep": dep}).first() is None:
            conn.execute(_RETIRE, {"dep": dep})


def end_unkept(engine: Engine, session_id: str, error: str, t_us: int, keys: Keyring) -> None:
    """Ends a session in ERROR with ``error`` when its `ended` record could not be kept (set
    aside): the session did end, and nothing else would ever say so in SQL (it stayed
    RUNNING, its subscriptions judged for every event, its deployment never retired)."""
    with engine.begin() as conn:
        conn.execute(
            update(_SESSIONS)
            .where(
                _SESSIONS.c.session_id == session_id,
                _SESSIONS.c.state.not_in(wire.FINAL_STATES),
            )
            .values(
                state=wire.ERROR,
                error=seal_column(keys, session_id, "error", error),
                updated_us=t_us,
            )
        )
        retire_drained(conn, {session_id})
        conn.execute(delete(_SUBSCRIPTIONS).where(_SUBSCRIPTIONS.c.session_id == session_id))


def apply_events(conn: Connection, events: list[wire.Event], keys: Keyring) -> None:
    """Keeps events, their data sealed (the caller commits); an event already kept is
    skipped."""
    insert_new(
        conn,
        EventRow.__table__,  # type: ignore[attr-defined]
        [
            {
                "event_id": ev.event_id,
                "project_id": ev.project_id,
                "destination_id": ev.destination_id,
                "event_type": ev.event_type,
                "data": sealed.sealed_data or wire.pack(ev.data),
                "memo": sealed.memo,
                "sealed_memo": sealed.sealed_memo or None,
                "created_us": ev.created_at_us,
            }
            for ev, sealed in ((ev, eventdata.sealed(ev, keys)) for ev in events)
        ],
    )


def apply_spans(engine: Engine, spans: list[dict[str, Any]]) -> None:
    """Keeps a batch of finished spans; a span already kept (same trace and span id) is skipped."""
    rows = []
    for sp in spans:
        attrs = sp.get("attributes") or {}
        rows.append(
            {
                "trace_id": sp["trace_id"],
                "span_id": sp["span_id"],
                "parent_id": sp.get("parent_id", ""),
                "session_id": str(attrs.get("ak.session_id", "")),
                "name": sp["name"],
                "service": sp.get("service", ""),
                "start_us": int(sp["start_us"]),
                "end_us": int(sp["end_us"]),
                "status": sp.get("status", "UNSET"),
                "status_description": sp.get("status_description", ""),
                "attributes": attrs,
                "events": sp.get("events") or [],
            }
        )
    with engine.begin() as conn:
        insert_new(conn, SpanRow.__table__, rows)  # type: ignore[attr-defined]
