"""What the client helpers share: a connection's variables, read from the session's
environment (``<connection>__<var>``), as AutoKitteh's helpers read them."""

from __future__ import annotations

import os

from .connections import check_connection_name
from .errors import ConnectionInitError


def var(connection: str, name: str) -> str:
    """The connection's variable ``name`` ("" when not set)."""
    return os.getenv(f"{connection}__{name}", "")


def required(connection: str, *names: str) -> list[str]:
    """The connection's variables ``names``, after checking its name; ConnectionInitError
    when one of them is missing or empty."""
    check_connection_name(connection)
    values = [var(connection, n) for n in names]
    if not all(values):
        raise ConnectionInitError(connection)
    return values
