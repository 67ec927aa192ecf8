"""Whose fault a failed SQL statement is: the database's (away, restarting, refusing
writes, full, out of connections: it passes, and what failed waits for it) or what was
written (a value the database cannot take: it fails the same way every time).

The store sets a journal record or an event aside only when it is the message's fault:
while the database refuses every write (read-only after a failover, its disk full), each
message fails alike, and setting them aside lost them all from SQL for good. The store's
operations answer "unavailable" for the database's faults, so that their callers wait (a
runner's system call, the start of an attempt) instead of taking a passing outage for the
handler's error."""

from __future__ import annotations

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.exc import (
    OperationalError as SqlOperationalError,
)
from sqlalchemy.exc import (
    TimeoutError as PoolTimeout,
)

# PostgreSQL error classes (the first two characters of SQLSTATE) that what a statement
# wrote causes: a value out of range or malformed, a constraint, a row over a limit.
_VALUE_CLASSES = frozenset({"22", "23", "54"})
# Classes of a database away or refusing for now: the connection (08), a read-only
# transaction (25006: a standby, default_transaction_read_only), a conflict between
# transactions (40), resources: disk, memory, connections (53), a lock or object in use
# (55), an administrator or a shutdown (57), the system: I/O (58).
_AWAY_CLASSES = frozenset({"08", "25", "40", "53", "55", "57", "58"})


def _sqlstate(e: DBAPIError) -> str:
    """PostgreSQL's SQLSTATE of the error ("" for SQLite's, and for psycopg's own)."""
    state = getattr(e.orig, "sqlstate", None)
    return state if isinstance(state, str) else ""


def message_at_fault(e: BaseException) -> bool:
    """Whether ``e``, raised applying a message, is the message's doing: it would fail the
    same way however long it waited (a value the database refuses, one that does not
    open or convert). What is not surely the message's (the database away or refusing
    writes, a schema older than the code, the machine short of memory) waits instead."""
    if isinstance(e, DBAPIError):
        if e.connection_invalidated:
            return False
        state = _sqlstate(e)
        if state:
            return state[:2] in _VALUE_CLASSES
        # SQLite, or psycopg refusing a value before sending it (a NUL in a text)
        return isinstance(e, (IntegrityError, DataError))
    if isinstance(e, StatementError):  # a value a column's type could not convert
        return e.orig is not None and message_at_fault(e.orig)
    if isinstance(e, SQLAlchemyError):  # the pool out of connections, one closed
        return False
    return not isinstance(e, (OSError, MemoryError, TimeoutError))


def database_away(e: BaseException) -> bool:
    """Whether ``e`` says the database is away or refusing for now (not a bug, not a value
    it refuses): an operation that failed so may be asked again once it is back."""
    if isinstance(e, PoolTimeout):
        return True
    if not isinstance(e, DBAPIError):
        return False
    if e.connection_invalidated:
        return True
    state = _sqlstate(e)
    if state:
        return state[:2] in _AWAY_CLASSES
    return isinstance(e, SqlOperationalError)  # SQLite locked, full, read-only; no server


def reason(e: BaseException) -> str:
    """The database's own words for ``e`` (its first line: no statement, no values)."""
    orig = getattr(e, "orig", None) or e
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else ''}".rstrip(": ")
