"""Engine creation and schema migrations (Alembic; SQLite and PostgreSQL)."""

from __future__ import annotations

import os
from pathlib import Path

from akcore.config import check_db_dsn
from akcore.errors import AKError
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy.engine import make_url
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
        # A database that does not answer (frozen, a network cut that drops packets) held a
        # connection attempt for 130 s (psycopg's own limit): a store starting said nothing.
        # (A limit the URL or libpq's PGCONNECT_TIMEOUT sets is the operator's: kept.)
        given = "connect_timeout" in make_url(dsn).query or "PGCONNECT_TIMEOUT" in os.environ
        connect = {} if given else {"connect_timeout": 10}
        engine = create_engine(dsn, pool_pre_ping=True, hide_parameters=True, connect_args=connect)
        idle_ms = int(IDLE_IN_TRANSACTION * 1000)

        @event.listens_for(engine, "connect")
        def _session_limits(conn, _rec):  # type: ignore[no-untyped-def]
            cur = conn.cursor()
            cur.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
            cur.close()
            conn.commit()

    if migrate_schema:
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


def alembic_config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: Engine) -> None:
    """Applies pending migrations, all or none: a store killed in the middle leaves the
    schema as it was. Several stores may start at once: on PostgreSQL an advisory lock
    makes the others wait; on SQLite the write lock, taken as the migration begins. A
    database made before migrations existed gets its missing tables and is marked as up to
    date."""
    atomic = _atomic_sqlite(engine) if engine.dialect.name == "sqlite" else engine
    try:
        with atomic.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            cfg = alembic_config(conn)
            tables = set(inspect(conn).get_table_names())
            if "alembic_version" not in tables and "project" in tables:
                SQLModel.metadata.create_all(conn)
                command.stamp(cfg, "head")
            else:
                _upgrade(conn, cfg)
    finally:
        if atomic is not engine:
            atomic.dispose()


def _upgrade(conn: Connection, cfg: Config) -> None:
    """Brings the schema to this version's head; a schema of a later version (a newer
    store migrated it) is refused in a line that says so."""
    script = ScriptDirectory.from_config(cfg)
    have = MigrationContext.configure(conn).get_current_revision()
    if have is not None and have not in {s.revision for s in script.walk_revisions()}:
        raise AKError(
            f"the database's schema is at version {have}, from a later autokitteh than this "
            f"store (which knows versions up to {script.get_current_head()}): run stores of "
            "that version or later on it"
        )
    command.upgrade(cfg, "head")


def _atomic_sqlite(engine: Engine) -> Engine:
    """An engine on ``engine``'s SQLite file whose transactions hold DDL too. Python's
    sqlite3 begins a transaction only before an INSERT, UPDATE or DELETE, so each CREATE,
    DROP or ALTER of a migration was committed as it ran: a store killed in the middle
    left a schema the next start could not migrate ("table ... already exists", a table
    copied and dropped but not renamed back), and it failed to start for ever. (The
    SQLAlchemy recipe for pysqlite: the driver begins nothing, the engine says BEGIN.)"""
    atomic = create_engine(engine.url, hide_parameters=True)

    @event.listens_for(atomic, "connect")
    def _no_driver_transactions(conn, _rec):  # type: ignore[no-untyped-def]
        conn.isolation_level = None

    @event.listens_for(atomic, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return atomic
