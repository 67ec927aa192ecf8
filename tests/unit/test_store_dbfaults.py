"""Whose fault a failed statement is (``ak_store.dbfaults``), on SQLite's real errors: a
database locked or out of room is the database's (what failed waits), a value it refuses is
the message's (set aside after a few tries)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from ak_store.dbfaults import database_away, message_at_fault, reason
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", connect_args={"timeout": 0.05})
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    return eng


def _error(engine: Engine, statement: str) -> SQLAlchemyError:
    with pytest.raises(SQLAlchemyError) as err, engine.begin() as conn:
        conn.execute(text(statement))
    return err.value


def test_a_locked_database_is_not_the_messages_fault(engine: Engine, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "db.sqlite")
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock (a backup, a shell)
    try:
        e = _error(engine, "INSERT INTO t (v) VALUES ('x')")
    finally:
        other.rollback()
        other.close()
    assert not message_at_fault(e)
    assert database_away(e)
    assert reason(e) == "OperationalError: database is locked"


def test_a_value_the_database_refuses_is_the_messages_fault(engine: Engine) -> None:
    e = _error(engine, "INSERT INTO t (v) VALUES (NULL)")
    assert message_at_fault(e)
    assert not database_away(e)


def test_errors_of_the_store_itself() -> None:
    assert message_at_fault(KeyError("state"))  # a record that does not hold what it must
    assert not message_at_fault(MemoryError())
    assert not message_at_fault(OSError(28, "No space left on device"))
    assert not database_away(KeyError("state"))  # a bug: an internal error, not a 503
