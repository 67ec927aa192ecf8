"""Connections as handlers use them: names, JWTs and OAuth tokens the system provides."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from .syscalls import _call, _inside

_NAME = re.compile(r"[A-Za-z_]\w*")


def check_connection_name(connection: str) -> None:
    """Raises ValueError unless ``connection`` is a valid connection name (a letter or
    ``_``, then letters, digits or ``_``)."""
    if not isinstance(connection, str) or not _NAME.fullmatch(connection):
        raise ValueError(f"Invalid AutoKitteh connection name: {connection!r}")


def encode_jwt(payload: dict[str, int], connection: str, algorithm: str) -> str:
    """A JWT of ``payload`` signed by the server with its GitHub app's private key (only
    ``RS256``); the key never reaches the handler. Outside the system: ``"DUMMY JWT"``."""
    if not _inside():
        print("!!!!!!!!!! SDK's encode_jwt() not overridden: returning a dummy JWT")
        return "DUMMY JWT"
    args = {"payload": dict(payload), "connection": connection, "algorithm": algorithm}
    return str(_call("encode_jwt", args))


def refresh_oauth(integration: str, connection: str) -> tuple[str, datetime]:
    """A fresh OAuth access token of ``connection`` and its expiry (naive UTC). Outside the
    system: ``("DUMMY TOKEN", now)``."""
    if not _inside():
        print("!!!!!!!!!! SDK's refresh_oauth() not overridden: returning a dummy token")
        return "DUMMY TOKEN", datetime.now(UTC).replace(tzinfo=None)
    got: Any = _call("refresh_oauth", {"integration": integration, "connection": connection})
    return str(got["token"]), datetime.fromtimestamp(got["expiry"], UTC).replace(tzinfo=None)
