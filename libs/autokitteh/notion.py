"""Notion clients for a ``notion`` connection (``notion_client ~= 2.0``)."""

from __future__ import annotations

from notion_client import Client

from ._helpers import var
from .connections import check_connection_name
from .errors import ConnectionInitError


def notion_client(connection: str) -> Client:
    """A ``notion_client.Client`` with the connection's ``api_key``, or else its OAuth
    access token."""
    check_connection_name(connection)
    auth = var(connection, "api_key") or var(connection, "oauth_access_token")
    if not auth:
        raise ConnectionInitError(connection)
    return Client(auth=auth)
