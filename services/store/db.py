"""Engine creation and schema set-up."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, event
from sqlmodel import SQLModel, create_engine

from . import models  # noqa: F401  (registers the tables)


def open_engine(dsn: str) -> Engine:
    """Opens the database at ``dsn`` and creates missing tables."""
    if dsn.startswith("sqlite:///"):
        Path(dsn.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(dsn, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _rec):  # type: ignore[no-untyped-def]
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    else:
        engine = create_engine(dsn, pool_pre_ping=True)
    SQLModel.metadata.create_all(engine)
    return engine
