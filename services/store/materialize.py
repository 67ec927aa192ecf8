"""Turns journal records and events from JetStream into SQL rows (idempotent per record)."""

from __future__ import annotations

from typing import Any

from akcore import wire
from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session as DB
from sqlmodel import col, select

from .models import Deployment, EventRow, Session, SessionRecord, SpanRow

_JOURNAL_LOCK = 0x616B5F6A  # "ak_j"


def insert_new(db: DB, table: Any, rows: list[dict[str, Any]]) -> None:
    """Inserts rows, skipping those that clash with a row already kept (a unique key): each
    message is applied at least once, so the same row may come again."""
    if not rows:
        return
    conn = db.connection()
    if conn.dialect.name == "postgresql":
        stmt: Any = pg_insert(table).on_conflict_do_nothing()
    else:
        stmt = sqlite_insert(table).on_conflict_do_nothing()
    conn.execute(stmt, rows)


def apply_records(db: DB, recs: list[wire.JournalRecord]) -> None:
    """Applies journal records in order (the caller commits). Applying a record twice
    changes nothing. Several stores apply the journal side by side, so a session's records
    may come out of order: a session created after its later records catches up with them."""
    # Stores apply their batches one after another: a batch must see what the batch before
    # it committed, so it takes the database's turn before it reads anything.
    conn = db.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _JOURNAL_LOCK})
    elif conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, held until commit
    ids = {r.session_id for r in recs}
    sessions = {
        s.session_id: s for s in db.exec(select(Session).where(col(Session.session_id).in_(ids)))
    }
    new = [r.session_id for r in recs if r.kind == wire.CREATED and r.session_id not in sessions]
    earlier = _later_records(db, new) if new else {}
    for rec in recs:
        s = sessions.get(rec.session_id)
        if rec.kind == wire.CREATED:
            if s is None:
                s = sessions[rec.session_id] = _created(rec)
                db.add(s)
                for kind, data, t_us in earlier.get(rec.session_id, []):
                    _advance(s, kind, data, t_us)
        elif s is not None:
            _advance(s, rec.kind, rec.data, rec.t_us)
    ended = {s.deployment_id for s in sessions.values() if s.state in _FINAL}
    if ended:
        db.flush()
        _retire_drained(db, ended)
    insert_new(
        db,
        SessionRecord.__table__,  # type: ignore[attr-defined]
        [
            {
                "session_id": r.session_id,
                "seq": r.seq,
                "kind": r.kind,
                "t_us": r.t_us,
                "data": {
                    k: v for k, v in r.data.items() if not isinstance(v, bytes) and k != "inputs"
                },
            }
            for r in recs
        ],
    )


def _advance(s: Session, kind: str, data: dict[str, Any], t_us: int) -> None:
    if kind == wire.STARTED and s.state == "CREATED":
        s.state, s.updated_us = "RUNNING", t_us
    elif kind == wire.ENDED:
        s.state = data.get("state", wire.ERROR)
        s.error = data.get("error") or ""
        s.traceback = data.get("traceback") or ""
        s.updated_us = t_us


def _later_records(
    db: DB, session_ids: list[str]
) -> dict[str, list[tuple[str, dict[str, Any], int]]]:
    """Records of sessions not created yet that another store already applied."""
    found: dict[str, list[tuple[str, dict[str, Any], int]]] = {}
    rows = db.exec(
        select(SessionRecord)
        .where(
            col(SessionRecord.session_id).in_(session_ids),
            col(SessionRecord.kind).in_((wire.STARTED, wire.ENDED)),
        )
        .order_by(col(SessionRecord.seq))
    )
    for r in rows:
        found.setdefault(r.session_id, []).append((r.kind, r.data, r.t_us))
    return found


def _created(rec: wire.JournalRecord) -> Session:
    d = rec.data
    return Session(
        session_id=rec.session_id,
        project_id=d.get("project_id", ""),
        deployment_id=d.get("deployment_id", ""),
        build_id=d.get("build_id", ""),
        trigger_id=d.get("trigger_id", ""),
        event_id=d.get("event_id") or "",
        entrypoint=d.get("entrypoint", ""),
        parent_session_id=d.get("parent_session_id") or "",
        inputs=d.get("inputs") or {},
        is_durable=bool(d.get("is_durable", True)),
        state="CREATED",
        created_us=rec.t_us,
        updated_us=rec.t_us,
    )


_FINAL = ("COMPLETED", "ERROR", "STOPPED")


def _retire_drained(db: DB, deployment_ids: set[str]) -> None:
    """A draining deployment becomes inactive when its last session has ended."""
    draining = db.exec(
        select(Deployment).where(
            col(Deployment.deployment_id).in_(deployment_ids), Deployment.state == "DRAINING"
        )
    ).all()
    for d in draining:
        live = db.exec(
            select(Session.session_id).where(
                Session.deployment_id == d.deployment_id, col(Session.state).not_in(_FINAL)
            )
        ).first()
        if live is None:
            d.state = "INACTIVE"
            db.add(d)


def apply_events(db: DB, events: list[wire.Event]) -> None:
    """Keeps events (the caller commits); an event already kept is skipped."""
    insert_new(
        db,
        EventRow.__table__,  # type: ignore[attr-defined]
        [
            {
                "event_id": ev.event_id,
                "project_id": ev.project_id,
                "destination_id": ev.destination_id,
                "event_type": ev.event_type,
                "data": wire.pack(ev.data),
                "memo": ev.memo,
                "created_us": ev.created_at_us,
            }
            for ev in events
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
    with DB(engine) as db:
        insert_new(db, SpanRow.__table__, rows)  # type: ignore[attr-defined]
        db.commit()
