"""A store starting against a PostgreSQL that does not answer (frozen, or behind a network
that drops its packets) gives up on the connection and says so, instead of hanging."""

from __future__ import annotations

import socket

import pytest
from ak_store import db
from ak_store.db import open_engine
from sqlalchemy.exc import OperationalError


def test_a_database_that_never_answers_is_given_up_on() -> None:
    # The kernel completes the connection (a frozen server's listening socket does) and
    # nothing answers the start-up message.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        with pytest.raises(OperationalError, match="timeout"):
            open_engine(f"postgresql+psycopg://ak@127.0.0.1:{port}/ak")


class _Made(Exception):
    pass


def test_a_limit_the_operator_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """``?connect_timeout=`` in the URL, or libpq's PGCONNECT_TIMEOUT (which psycopg reads
    when the connection's arguments do not set one), is not replaced by the 10 s."""
    made: list[dict[str, object]] = []

    def create_engine(dsn: str, **kwargs: object) -> None:
        made.append(dict(kwargs.get("connect_args") or {}))  # type: ignore[call-overload]
        raise _Made

    monkeypatch.setattr(db, "create_engine", create_engine)
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    for dsn in ("postgresql+psycopg://ak@h/ak", "postgresql+psycopg://ak@h/ak?connect_timeout=3"):
        with pytest.raises(_Made):
            db.open_engine(dsn)
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "30")
    with pytest.raises(_Made):
        db.open_engine("postgresql+psycopg://ak@h/ak")
    assert made == [{"connect_timeout": 10}, {}, {}]
