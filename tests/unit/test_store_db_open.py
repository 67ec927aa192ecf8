"""A store starting against a PostgreSQL that does not answer (frozen, or behind a network
that drops its packets) gives up on the connection and says so, instead of hanging."""

from __future__ import annotations

import socket

import pytest
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
