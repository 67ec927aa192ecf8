"""Turns journal records and events from JetStream into SQL rows (idempotent per record)."""

from __future__ import annotations

from typing import Any

from akcore import wire
from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from .models import Deployment, EventRow, Session, SessionRecord, SpanRow

_STATE_BY_KIND = {wire.STARTED: "RUNNING"}


def apply_record(db: DB, rec: wire.JournalRecord) -> None:
    """Applies one journal record (the caller commits); a record already applied (same
    session and seq) is skipped. Several stores apply the journal side by side, so a
    session's records may arrive out of order: its state is the latest its records say."""
    seen = db.exec(
        select(SessionRecord.id).where(
            SessionRecord.session_id == rec.session_id, SessionRecord.seq == rec.seq
        )
    ).first()
    if seen is not None:
        return
    s = db.get(Session, rec.session_id)
    if rec.kind == wire.CREATED:
        if s is None:
            s = _created(rec)
            _catch_up(db, s)
    elif s is not None and rec.kind == wire.STARTED and s.state == "CREATED":
        s.state, s.updated_us = "RUNNING", rec.t_us
    elif s is not None and rec.kind == wire.ENDED:
        _end(db, s, rec.data, rec.t_us)
    data = {k: v for k, v in rec.data.items() if not isinstance(v, bytes) and k != "inputs"}
    db.add(
        SessionRecord(
            session_id=rec.session_id, seq=rec.seq, kind=rec.kind, t_us=rec.t_us, data=data
        )
    )
    if s is not None:
        db.add(s)


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


def _catch_up(db: DB, s: Session) -> None:
    """A session created after some of its later records were applied (by another store)."""
    later = db.exec(
        select(SessionRecord)
        .where(
            SessionRecord.session_id == s.session_id,
            col(SessionRecord.kind).in_((wire.STARTED, wire.ENDED)),
        )
        .order_by(col(SessionRecord.seq))
    ).all()
    for r in later:
        if r.kind == wire.STARTED and s.state == "CREATED":
            s.state, s.updated_us = "RUNNING", r.t_us
        elif r.kind == wire.ENDED:
            _end(db, s, r.data, r.t_us)


def _end(db: DB, s: Session, data: dict[str, Any], t_us: int) -> None:
    s.state = data.get("state", wire.ERROR)
    s.error = data.get("error") or ""
    s.traceback = data.get("traceback") or ""
    s.updated_us = t_us
    _retire_if_drained(db, s.deployment_id, s.session_id)


def _retire_if_drained(db: DB, deployment_id: str, ending: str) -> None:
    """A draining deployment becomes inactive when its last session ends."""
    d = db.get(Deployment, deployment_id)
    if d is None or d.state != "DRAINING":
        return
    live = db.exec(
        select(Session).where(
            Session.deployment_id == deployment_id,
            Session.session_id != ending,
            col(Session.state).not_in(("COMPLETED", "ERROR", "STOPPED")),
        )
    ).first()
    if live is None:
        d.state = "INACTIVE"
        db.add(d)


def apply_event(db: DB, ev: wire.Event) -> None:
    """Keeps one event (the caller commits); an event already kept is skipped."""
    if db.exec(select(EventRow.seq).where(EventRow.event_id == ev.event_id)).first():
        return
    db.add(
        EventRow(
            event_id=ev.event_id,
            project_id=ev.project_id,
            destination_id=ev.destination_id,
            event_type=ev.event_type,
            data=wire.pack(ev.data),
            memo=ev.memo,
            created_us=ev.created_at_us,
        )
    )


def apply_spans(engine: Engine, spans: list[dict[str, Any]]) -> None:
    """Keeps a batch of finished spans; a span already kept (same trace and span id) is skipped."""
    with DB(engine) as db:
        ids = {sp["span_id"] for sp in spans}
        traces = {sp["trace_id"] for sp in spans}
        kept = set(
            db.exec(
                select(SpanRow.trace_id, SpanRow.span_id).where(
                    col(SpanRow.trace_id).in_(traces), col(SpanRow.span_id).in_(ids)
                )
            ).all()
        )
        for sp in spans:
            if (sp["trace_id"], sp["span_id"]) in kept:
                continue
            kept.add((sp["trace_id"], sp["span_id"]))
            attrs = sp.get("attributes") or {}
            db.add(
                SpanRow(
                    trace_id=sp["trace_id"],
                    span_id=sp["span_id"],
                    parent_id=sp.get("parent_id", ""),
                    session_id=str(attrs.get("ak.session_id", "")),
                    name=sp["name"],
                    service=sp.get("service", ""),
                    start_us=int(sp["start_us"]),
                    end_us=int(sp["end_us"]),
                    status=sp.get("status", "UNSET"),
                    status_description=sp.get("status_description", ""),
                    attributes=attrs,
                    events=sp.get("events") or [],
                )
            )
        db.commit()
