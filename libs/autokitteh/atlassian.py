"""Jira and Confluence clients for a ``jira`` or ``confluence`` connection
(``atlassian-python-api ~= 3.41``).

A token connection holds ``BaseURL`` (the site, e.g. ``https://example.atlassian.net``),
``Token`` and, for Atlassian Cloud, ``Email``: with an email the token is an API token sent
with it as basic auth; without one it is a Server / Data Center personal access token sent
as a bearer token. OAuth connections (``oauth_AccessToken``) are refused with
``AtlassianOAuthError``, as AutoKitteh's SDK refuses them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from atlassian import Confluence, Jira

from ._helpers import var
from .connections import check_connection_name
from .errors import AtlassianOAuthError, ConnectionInitError

_Client = TypeVar("_Client", Jira, Confluence)


def jira_client(connection: str, **kwargs: Any) -> Jira:
    """An ``atlassian.Jira`` for the connection's site with its token (see the module).

    ``kwargs`` go to the client (``timeout``, ``verify_ssl``, ...); a ``url``, ``username``,
    ``password`` or ``token`` given there wins over the connection's.

    Raises:
        ValueError: the connection name is invalid.
        AtlassianOAuthError: an OAuth connection (use a token connection).
        ConnectionInitError: ``Token`` or ``BaseURL`` is missing.
    """
    return _client(Jira, connection, kwargs)


def confluence_client(connection: str, **kwargs: Any) -> Confluence:
    """An ``atlassian.Confluence`` for the connection's site, as ``jira_client``."""
    return _client(Confluence, connection, kwargs)


def get_base_url(connection: str) -> str | None:
    """The connection's Atlassian site URL (``BaseURL``, else an OAuth connection's
    ``AccessURL``), or None while it has neither."""
    check_connection_name(connection)
    return var(connection, "BaseURL") or var(connection, "AccessURL") or None


def _client(cls: type[_Client], connection: str, kwargs: dict[str, Any]) -> _Client:
    check_connection_name(connection)
    if var(connection, "oauth_AccessToken"):
        raise AtlassianOAuthError(connection)
    token, url = var(connection, "Token"), var(connection, "BaseURL")
    # AutoKitteh's helper lets a missing BaseURL through to the first request's failure.
    if not token or not (url or kwargs.get("url")):
        raise ConnectionInitError(connection)
    email = var(connection, "Email")
    auth: dict[str, Any] = (
        {"username": email, "password": token, "cloud": True} if email else {"token": token}
    )
    return cls(**({"url": url} | auth | kwargs))
