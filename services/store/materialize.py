"""Turns journal records and events from JetStream into SQL rows (idempotent per record)."""

from __future__ import annotations

from typing import Any

from akcore import wire
from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from .models import Deployment, EventRow, Session, SessionRecord, SpanRow

_STATE_BY_KIND = {wire.STARTED: "RUNNING"}


def apply_record(engine: Engine, rec: wire.JournalRecord) -> None:
    """Applies one journal record; a record already applied (same session and seq) is skipped."""
    with DB(engine) as db:
        seen = db.exec(
            select(SessionRecord.id).where(
                SessionRecord.session_id == rec.session_id, SessionRecord.seq == rec.seq
            )
        ).first()
        if seen is not None:
            return
        s = db.get(Session, rec.session_id)
        if rec.kind == wire.CREATED:
            d = rec.data
            if s is None:
                s = Session(
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
        elif s is not None and rec.kind == wire.STARTED and s.state == "CREATED":
            s.state, s.updated_us = "RUNNING", rec.t_us
        elif s is not None and rec.kind == wire.ENDED:
            s.state = rec.data.get("state", wire.ERROR)
            s.error = rec.data.get("error") or ""
            s.traceback = rec.data.get("traceback") or ""
            s.updated_us = rec.t_us
            _retire_if_drained(db, s.deployment_id, rec.session_id)
        data = {k: v for k, v in rec.data.items() if not isinstance(v, bytes) and k != "inputs"}
        db.add(
            SessionRecord(
                session_id=rec.session_id, seq=rec.seq, kind=rec.kind, t_us=rec.t_us, data=data
            )
        )
        if s is not None:
            db.add(s)
        db.commit()


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


def apply_event(engine: Engine, ev: wire.Event) -> None:
    with DB(engine) as db:
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
        db.commit()


def apply_spans(engine: Engine, spans: list[dict[str, Any]]) -> None:
    """Keeps a batch of finished spans; a span already kept (same trace and span id) is skipped."""
    with DB(engine) as db:
        for sp in spans:
            seen = db.exec(
                select(SpanRow.id).where(
                    SpanRow.trace_id == sp["trace_id"], SpanRow.span_id == sp["span_id"]
                )
            ).first()
            if seen is not None:
                continue
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
