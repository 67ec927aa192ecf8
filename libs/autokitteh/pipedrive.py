"""Pipedrive clients for a ``pipedrive`` connection (``pipedrive-python-lib ~= 1.2``)."""

from __future__ import annotations

from pipedrive.client import Client

from ._helpers import required


def pipedrive_client(connection: str) -> Client:
    """A ``pipedrive.client.Client`` for the connection's ``company_domain`` and ``api_key``."""
    domain, key = required(connection, "company_domain", "api_key")
    client = Client(domain=domain)
    client.set_api_token(key)
    return client
