"""Airtable clients for an ``airtable`` connection (``pyairtable ~= 3.1``)."""

from __future__ import annotations

from pyairtable import Api

from ._helpers import var
from .connections import check_connection_name, refresh_oauth
from .errors import ConnectionInitError, OAuthRefreshError


def airtable_client(connection: str) -> Api:
    """A ``pyairtable.Api`` with the connection's personal access token (``pat``), or in
    OAuth mode with a token refreshed for each call (``refresh_oauth``)."""
    check_connection_name(connection)
    pat = var(connection, "pat")
    if pat:
        return Api(pat)
    if not var(connection, "oauth_refresh_token"):
        raise ConnectionInitError(connection)
    try:
        token, _ = refresh_oauth("airtable", connection)
    except Exception as e:
        raise OAuthRefreshError(connection, str(e)) from e
    return Api(token)
