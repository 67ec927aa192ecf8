"""Twilio clients for a ``twilio`` connection (``twilio ~= 9.4``)."""

from __future__ import annotations

from twilio.rest import Client

from ._helpers import required, var


def twilio_client(connection: str) -> Client:
    """A ``twilio.rest.Client`` with the connection's ``Username`` and ``Password`` (an
    account SID and auth token, or an API key and secret) and its ``AccountSID``."""
    username, password = required(connection, "Username", "Password")
    return Client(username, password, account_sid=var(connection, "AccountSID") or None)
