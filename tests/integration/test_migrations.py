"""The store's schema comes from migrations, and the migrations match the models."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from ak_store.db import MIGRATIONS, alembic_config, migrate, open_engine
from ak_store.routes import claim_digest
from akcore.errors import AKError
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlmodel import SQLModel, create_engine


def test_migrations_build_exactly_the_models(db_dsn: str) -> None:
    engine = open_engine(db_dsn)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert diff == []  # a model change without a migration fails here
    assert version is not None
    migrate(engine)  # a second start finds nothing to do
    engine.dispose()


def test_database_from_before_migrations_is_adopted(db_dsn: str) -> None:
    old = create_engine(db_dsn)
    SQLModel.metadata.tables["project"].create(old)  # as `create_all` of an old version left it
    old.dispose()
    engine = open_engine(db_dsn)
    tables = set(inspect(engine).get_table_names())
    assert {"project", "spans", "connection", "alembic_version"} <= tables
    engine.dispose()


def test_routing_claims_of_an_older_database_go_to_the_first_var(db_dsn: str) -> None:
    """Version 0006 gives connections' routing vars their unique claims; two connections
    that both won a race for one routing value before it keep it for the first var only."""
    engine = create_engine(db_dsn)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0005")
        for cid in ("con_a", "con_b"):
            conn.execute(
                text(
                    "INSERT INTO connection (connection_id, project_id, name, integration) "
                    "VALUES (:c, 'prj_x', :c, 'github')"
                ),
                {"c": cid},
            )
        for scope, name, value in (
            ("con_a", "pat_key", "k3y"),
            ("con_b", "pat_key", "k3y"),  # the race's second winner
            ("con_b", "install_key__1__2", "1"),
            ("prj_x", "pat_key", "k3y"),  # a project's var: routes nothing, claims nothing
            ("con_a", "other", "k3y"),
        ):
            conn.execute(
                text(
                    "INSERT INTO var (scope_id, name, value, is_secret, description) "
                    "VALUES (:s, :n, :v, :f, '')"
                ),
                {"s": scope, "n": name, "v": value, "f": False},
            )
    engine.dispose()
    engine = open_engine(db_dsn)  # migrates to head
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT scope_id, name, route_key FROM var ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        ("con_a", "pat_key", claim_digest("pat_key=k3y")),
        ("con_b", "pat_key", None),
        ("con_b", "install_key__1__2", claim_digest("install_key__1__2")),
        ("prj_x", "pat_key", None),
        ("con_a", "other", None),
    ]


KILLED_AT = """\
import os, signal, sys
from sqlalchemy import Engine, event
from ak_store.db import open_engine

@event.listens_for(Engine, "after_cursor_execute")
def _die(conn, cursor, statement, *args):
    if " ".join(statement.split()).upper().startswith(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)

open_engine(sys.argv[1])
"""


def test_a_store_killed_in_the_middle_of_a_migration_starts_again(db_dsn: str) -> None:
    """Killed (SIGKILL) right after a migration's first statement (0006 adds a column to
    ``var``), a store leaves the schema as it was, and the next start migrates it. On
    SQLite each statement was committed as it ran: every later start failed ("duplicate
    column name: route_key"; a migration that copies a table could leave it dropped and
    its copy not renamed back)."""
    engine = create_engine(db_dsn)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0005")
        conn.execute(
            text(
                "INSERT INTO var (scope_id, name, value, is_secret, description) "
                "VALUES ('prj_x', 'kept', 'v', :f, '')"
            ),
            {"f": False},
        )
    engine.dispose()
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT, db_dsn, "ALTER TABLE VAR ADD"],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    engine = open_engine(db_dsn)  # the next start
    with engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        kept = conn.execute(text("SELECT name, value, route_key FROM var")).all()
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    assert [tuple(r) for r in kept] == [("kept", "v", None)]
    assert diff == []
    assert version == ScriptDirectory(str(MIGRATIONS)).get_current_head()


def test_a_schema_of_a_later_version_is_refused_in_one_line(db_dsn: str) -> None:
    """A store of an earlier version started on a database a later one migrated (a rolling
    upgrade's last old store, a rollback) said only "Can't locate revision identified by
    '0042'", under a traceback, and started again and again."""
    engine = open_engine(db_dsn)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042'"))
    engine.dispose()
    with pytest.raises(AKError) as err:
        open_engine(db_dsn)
    assert err.value.message.startswith(
        "the database's schema is at version 0042, from a later autokitteh than this store"
    )
