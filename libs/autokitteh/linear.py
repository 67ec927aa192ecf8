"""Linear clients for a ``linear`` connection (``requests``; OAuth: ``requests-toolbelt``)."""

from __future__ import annotations

import requests

from ._helpers import var
from .connections import check_connection_name
from .errors import ConnectionInitError

BASE_URL = "https://api.linear.app/graphql/"


def linear_client(connection: str) -> requests.Session:
    """A ``requests.Session`` for Linear's GraphQL API (``BASE_URL``) with the
    connection's ``api_key``, or in OAuth mode its access token (refreshed on a 401)."""
    check_connection_name(connection)
    key = var(connection, "api_key")
    if key:
        session = requests.Session()
        session.headers.update({"Authorization": key, "Content-Type": "application/json"})
        # As AutoKitteh's: an attribute a plain Session ignores (callers give full URLs).
        session.base_url = BASE_URL  # type: ignore[attr-defined]
        return session
    if not var(connection, "oauth_access_token"):
        raise ConnectionInitError(connection)
    from .oauth2_session import OAuth2Session  # needs requests-toolbelt

    return OAuth2Session("linear", connection, base_url=BASE_URL)
