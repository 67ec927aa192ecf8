"""Asana clients for an ``asana`` connection (``asana ~= 5.0``)."""

from __future__ import annotations

import asana

from ._helpers import required


def asana_client(connection: str) -> asana.ApiClient:
    """An ``asana.ApiClient`` with the connection's personal access token (``pat``)."""
    (pat,) = required(connection, "pat")
    config = asana.Configuration()
    config.access_token = pat
    return asana.ApiClient(config)
