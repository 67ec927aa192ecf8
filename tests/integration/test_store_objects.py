"""Deleting whole objects in the store: refused while something still needs them, and then
complete (no row of a deleted project is left, no row of another project is touched)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from ak_store.api import StoreApi
from ak_store.db import open_engine
from ak_store.models import (
    Build,
    Connection,
    Deployment,
    DispatchNote,
    EventRow,
    Project,
    Session,
    SessionRecord,
    SpanRow,
    Subscription,
    Trigger,
    Var,
)
from akcore import ids, ops, timefmt
from akcore.datakey import Keyring
from akcore.errors import Conflict, NotFound
from akcore.secrets import Sealer
from cryptography.fernet import Fernet
from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import SQLModel, select

MANIFEST = """\
version: v1
project:
  name: {name}
  vars:
    - name: USER
      value: Garfield
  connections:
    - name: api
      integration: http
      vars:
        - name: token
          value: s3cr3t
          secret: true
  triggers:
    - name: events
      call: simple.py:greet
      webhook: {{}}
"""
TABLES: tuple[type[SQLModel], ...] = (
    Build,
    Connection,
    Deployment,
    DispatchNote,
    EventRow,
    Project,
    Session,
    SessionRecord,
    SpanRow,
    Subscription,
    Trigger,
    Var,
)


def call(api: StoreApi, name: str, args: dict[str, Any]) -> Any:
    """One operation, given those of ``args`` its request has."""
    fields = {f.name for f in dataclasses.fields(ops.get(name).request)}
    req = ops.get(name).parse({k: v for k, v in args.items() if k in fields})
    return api.routes()[name](req)


@pytest.fixture
def store(db_dsn: str) -> Iterator[tuple[StoreApi, Engine]]:
    engine = open_engine(db_dsn)
    yield StoreApi(engine, Sealer(Fernet.generate_key()), Keyring([Fernet.generate_key()])), engine
    engine.dispose()


def _project(api: StoreApi, engine: Engine, name: str) -> dict[str, str]:
    """A deployed project with a running session, its records, spans and event."""
    pid = call(api, "manifest.apply", {"text": MANIFEST.format(name=name)})["project_id"]
    bid = call(api, "build.create", {"project": pid, "files": {"simple.py": b""}})
    did = call(api, "deployment.create", {"project": pid, "build_id": bid})
    call(api, "deployment.activate", {"deployment_id": did})
    sid, eid, now = ids.new_id("ses"), ids.new_id("evt"), timefmt.now_us()
    with DB(engine) as db:
        db.add(
            Session(
                session_id=sid,
                project_id=pid,
                deployment_id=did,
                build_id=bid,
                event_id=eid,
                state="RUNNING",
                created_us=now,
                updated_us=now,
            )
        )
        db.add(SessionRecord(session_id=sid, seq=1, kind="print", t_us=now, data={"text": "hi"}))
        db.add(
            SpanRow(
                trace_id="t" + name,
                span_id="s",
                session_id=sid,
                name="x",
                service="runner",
                start_us=now,
                end_us=now,
            )
        )
        db.add(
            Subscription(
                subscription_id="sub_" + name,
                session_id=sid,
                project_id=pid,
                trigger_id="trg",
                created_us=now,
            )
        )
        db.add(EventRow(event_id=eid, project_id=pid, data=b"\x80", created_us=now))
        db.add(DispatchNote(event_id=eid, source="trg", note="n", created_us=now))
        db.commit()
    return {"project_id": pid, "build_id": bid, "deployment_id": did, "session_id": sid}


def _set_state(engine: Engine, sid: str, state: str) -> None:
    with DB(engine) as db:
        s = db.get(Session, sid)
        assert s is not None
        s.state = state
        db.add(s)
        db.commit()


def _counts(engine: Engine) -> dict[str, int]:
    with DB(engine) as db:
        return {t.__name__: len(db.exec(select(t)).all()) for t in TABLES}


def test_a_project_is_deleted_whole_once_nothing_needs_it(
    store: tuple[StoreApi, Engine],
) -> None:
    api, engine = store
    mine = _project(api, engine, "mine")
    _project(api, engine, "other")
    before = _counts(engine)

    with pytest.raises(Conflict, match="ACTIVE: deactivate it"):
        call(api, "project.delete", {"project": "mine"})
    assert call(api, "deployment.deactivate", mine)["state"] == "DRAINING"
    with pytest.raises(Conflict, match="in state DRAINING"):
        call(api, "project.delete", {"project": "mine"})
    with pytest.raises(Conflict, match="is DRAINING"):
        call(api, "deployment.delete", mine)
    with pytest.raises(Conflict, match="used by deployment"):
        call(api, "build.delete", mine)
    with pytest.raises(Conflict, match="only an ended session"):
        call(api, "session.delete", mine)

    _set_state(engine, mine["session_id"], "COMPLETED")
    assert call(api, "deployment.deactivate", mine)["state"] == "INACTIVE"
    assert _counts(engine) == before  # refusals changed nothing
    call(api, "project.delete", {"project": "mine"})

    after = _counts(engine)
    # Exactly one project's rows went: each table holds what "other" has.
    assert after == {k: v // 2 for k, v in before.items()}
    with DB(engine) as db:
        for table in TABLES:
            for row in db.exec(select(table)):
                assert mine["project_id"] not in str(row.model_dump()), (table.__name__, row)
    with pytest.raises(NotFound):
        call(api, "project.get", {"project": "mine"})


def test_ended_sessions_unused_builds_and_inactive_deployments_go(
    store: tuple[StoreApi, Engine],
) -> None:
    api, engine = store
    p = _project(api, engine, "p")
    _set_state(engine, p["session_id"], "ERROR")
    shown = call(api, "session.delete", p)
    assert shown == {"session_id": p["session_id"], "project_id": p["project_id"], "state": "ERROR"}
    counts = _counts(engine)
    assert counts["SessionRecord"] == counts["SpanRow"] == counts["Subscription"] == 0
    call(api, "deployment.deactivate", p)
    call(api, "deployment.delete", p)
    call(api, "build.delete", p)
    assert _counts(engine)["Build"] == _counts(engine)["Deployment"] == 0
    with pytest.raises(NotFound):
        call(api, "build.delete", p)
