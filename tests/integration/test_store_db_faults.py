"""The store while its PostgreSQL database is away or refuses writes (read-only after a
failover, closed to connections): no journal record or event is set aside for it (each
would have been lost from SQL, its session never listed or left RUNNING), what waited is
applied once the database is back, and the store's callers are told "unavailable", which
they wait out, rather than "internal error"."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ak_store.db as store_db
import ak_store.service as store_service
import pytest
from ak_store.materialize import _JOURNAL_LOCK as JOURNAL_LOCK
from ak_store.service import run as run_store
from akcore import bus, ids, subjects, wire
from akcore.config import Settings
from akcore.errors import Unavailable
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.pg import ADMIN_URL, fresh_database

from .conftest import running
from .helpers import eventually


@pytest.fixture
def pg_settings(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with fresh_database() as dsn:
        yield Settings(
            nats_url=nats_url,
            http_addr="127.0.0.1:0",
            db_dsn=dsn,
            worker_python=sys.executable,
        )


@contextmanager
def refusing(dsn: str, how: str) -> Iterator[None]:
    """The database refuses the store until the block ends: ``read_only`` (it answers and
    reads, but refuses every write, as a standby does), or ``closed`` (no connection at
    all). Its open connections are ended, as a failover or a restart ends them."""
    name = make_url(dsn).database
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    on = {
        "read_only": f'ALTER DATABASE "{name}" SET default_transaction_read_only = on',
        "closed": f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
    }[how]
    off = {
        "read_only": f'ALTER DATABASE "{name}" SET default_transaction_read_only = off',
        "closed": f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true',
    }[how]
    ends = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n")
    try:
        with admin.connect() as conn:
            conn.execute(text(on))
            conn.execute(ends, {"n": name})
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(off))
            conn.execute(ends, {"n": name})
        admin.dispose()


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the store's transactions applying journal records (failed ones too)."""
    tries = [0]
    apply = store_service.apply_records

    def counted(conn: Any, recs: Any, keys: Any) -> None:
        tries[0] += 1
        apply(conn, recs, keys=keys)

    monkeypatch.setattr(store_service, "apply_records", counted)
    return tries


async def test_records_wait_while_the_database_refuses_writes(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that answers but refuses every write made each record look like one the
    store could never keep: after a few tries it was set aside (terminated), its session
    told to stop; once the database took writes again those sessions were missing from SQL
    or stuck RUNNING. Now the records wait, however many tries that takes."""
    monkeypatch.setattr(store_service, "MAX_APPLY_ATTEMPTS", 2)
    monkeypatch.setattr(store_service, "OUTAGE_PAUSE", 0.05, raising=False)
    monkeypatch.setattr(store_service, "OUTAGE_PAUSE_MAX", 0.2, raising=False)
    tries = _counting(monkeypatch)
    async with running(run_store, pg_settings, "store"):
        nc = await bus.connect(pg_settings.nats_url, "t")
        js = nc.jetstream()
        sid = ids.new_id("ses")
        with refusing(pg_settings.db_dsn, "read_only"):
            for rec in (
                wire.JournalRecord(sid, 0, wire.CREATED, 1, {"project_id": "prj_1"}),
                wire.JournalRecord(sid, 1, wire.ENDED, 2, {"state": wire.COMPLETED}),
            ):
                await js.publish(subjects.journal_subject(sid), wire.encode(rec))

            # Tried more often than it took to set a record aside (a batch and then each
            # record alone, per delivery).
            async def tried() -> bool:
                return tries[0] >= 3 * store_service.MAX_APPLY_ATTEMPTS

            await eventually(tried, timeout=60)

        async def ended() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = await bus.store_call(nc, "session.get", {"session": sid})
            except Exception:
                return None
            return found if found["state"] == "COMPLETED" else None

        assert (await eventually(ended, timeout=30))["state"] == "COMPLETED"
        inbox = await js.stream_info(subjects.STREAM_INBOX, subjects_filter=f"ak.inbox.{sid}")
        assert not inbox.state.subjects  # nobody was told to stop it
        await nc.close()


async def test_the_stores_callers_are_told_to_wait(pg_settings: Settings) -> None:
    """With the database away or read-only, an operation is answered "unavailable" (HTTP
    503, and what a runner waits out: a session resumed meanwhile ended in ERROR with
    "could not prepare the session's code: build.get failed with OperationalError: an
    internal error"), in one line that names no host, statement or value."""
    async with running(run_store, pg_settings, "store"):
        nc = await bus.connect(pg_settings.nats_url, "t")
        for how, op, args in (
            ("closed", "build.get", {"build_id": "bld_01m988ms28e91bwwjdygasj1pk"}),
            ("read_only", "project.create", {"name": "p1"}),
        ):
            with refusing(pg_settings.db_dsn, how):
                with pytest.raises(Unavailable) as err:
                    await bus.store_call(nc, op, args)
            assert err.value.message == (
                f"{op} failed: the store's database is away or refusing it for now (the "
                "store's log says why): try again once it is back"
            ), how
        created = await bus.store_call(nc, "project.create", {"name": "p1"})
        assert created  # and once it is back, it is answered
        await nc.close()


async def test_spans_dropped_while_the_database_is_away_are_said_once(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Spans are diagnostics, dropped when the database refuses them; every span of every
    session then failed, and each drop was a log line of its own with its statement."""
    tries = [0]
    apply = store_service.apply_spans

    def counted(engine: Any, spans: Any) -> None:
        tries[0] += 1
        apply(engine, spans)

    monkeypatch.setattr(store_service, "apply_spans", counted)
    span = {"trace_id": "t1", "span_id": "s1", "name": "x", "start_us": 1, "end_us": 2}
    async with running(run_store, pg_settings, "store"):
        nc = await bus.connect(pg_settings.nats_url, "t")
        with refusing(pg_settings.db_dsn, "closed"):
            for _ in range(5):
                await nc.publish(subjects.SPANS, wire.pack([span]))

            async def all_tried() -> bool:
                return tries[0] >= 5

            await eventually(all_tried)
        await nc.close()
    said = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
    assert len(said) == 1, said
    assert "\n" not in said[0] and "SQL" not in said[0]


async def test_a_store_frozen_in_a_transaction_holds_up_the_others_for_a_while(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every store takes one lock to apply journal records. A store frozen in the middle of
    that (SIGSTOP, a paused VM, a network cut) left its transaction open on the server, and
    no other store applied a record until it came back: sessions stayed CREATED or RUNNING
    in SQL. The server now ends such a transaction (``db.IDLE_IN_TRANSACTION``); here a
    connection of the store's holds the lock, idle, as a frozen store's does."""
    monkeypatch.setattr(store_db, "IDLE_IN_TRANSACTION", 1.0, raising=False)
    frozen = store_db.open_engine(pg_settings.db_dsn)
    conn = frozen.connect()
    try:
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": JOURNAL_LOCK})
        async with running(run_store, pg_settings, "store"):
            nc = await bus.connect(pg_settings.nats_url, "t")
            js = nc.jetstream()
            sid = ids.new_id("ses")
            for rec in (
                wire.JournalRecord(sid, 0, wire.CREATED, 1, {"project_id": "prj_1"}),
                wire.JournalRecord(sid, 1, wire.ENDED, 2, {"state": wire.COMPLETED}),
            ):
                await js.publish(subjects.journal_subject(sid), wire.encode(rec))

            async def ended() -> dict[str, Any] | None:
                try:
                    found = await bus.store_call(nc, "session.get", {"session": sid})
                except Exception:
                    return None
                return found if found["state"] == "COMPLETED" else None

            assert await eventually(ended, timeout=30)
            await nc.close()
    finally:
        conn.invalidate()  # (the server ended it: nothing to roll back)
        conn.close()
        frozen.dispose()
