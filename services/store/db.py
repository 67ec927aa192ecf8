"""Engine creation and schema migrations (Alembic; SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from akcore.config import check_db_dsn
from akcore.errors import AKError
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, event, inspect, text
from sqlmodel import SQLModel, create_engine

from . import models  # noqa: F401  (registers the tables)

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 0x616B5F73  # "ak_s": one migrating store at a time on PostgreSQL
# Seconds a store's PostgreSQL session may sit in a transaction with no statement running
# before the server ends it (and its transaction, and its locks). A store never pauses that
# long inside one; one frozen there (SIGSTOP, a paused VM) or cut off from the database held
# the journal's lock, which every store takes to apply records, for as long as the server
# kept its connection: hours, with the kernel's TCP keepalive. No session reached SQL.
IDLE_IN_TRANSACTION = 60.0


def open_engine(dsn: str, migrate_schema: bool = True) -> Engine:
    """Opens the database at ``dsn`` and brings its schema up to date. A statement's
    values are left out of the database's errors (``hide_parameters``): such an error is
    logged, and answered to the API's caller, and its values may be a var's, a token's
    digest, an event's."""
    try:
        check_db_dsn(dsn)
    except ValueError as e:
        raise AKError(str(e)) from None
    if dsn.startswith("sqlite:///"):
        Path(dsn.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(dsn, connect_args={"check_same_thread": False}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _rec):  # type: ignore[no-untyped-def]
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    else:
        engine = create_engine(dsn, pool_pre_ping=True, hide_parameters=True)
        idle_ms = int(IDLE_IN_TRANSACTION * 1000)

        @event.listens_for(engine, "connect")
        def _session_limits(conn, _rec):  # type: ignore[no-untyped-def]
            cur = conn.cursor()
            cur.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
            cur.close()
            conn.commit()

    if migrate_schema:
        migrate(engine)
    return engine


def alembic_config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: Engine) -> None:
    """Applies pending migrations. Several stores may start at once: on PostgreSQL an
    advisory lock makes the others wait; SQLite serializes writers itself. A database made
    before migrations existed gets its missing tables and is marked as up to date."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        cfg = alembic_config(conn)
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables and "project" in tables:
            SQLModel.metadata.create_all(conn)
            command.stamp(cfg, "head")
        else:
            command.upgrade(cfg, "head")
