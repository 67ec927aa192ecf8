"""Google API clients for Google connections (``google-api-python-client ~= 2.122``, which
brings ``google-auth``).

A connection is either a GCP service account, whose JSON key is the var ``JSON``, or a
user's OAuth grant (``auth_type`` = ``oauth``, with ``oauth_AccessToken`` and
``oauth_Expiry``). An expired OAuth token is renewed through ``refresh_oauth``, as in
AutoKitteh; this server does not renew OAuth tokens yet, so that ends in
``OAuthRefreshError``. The client builders use the API descriptions that ship with the
package, so building a client reads nothing from the network. In a durable session only
a request's ``execute()`` is an activity (see ``register_no_activity`` below).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import google.oauth2.credentials
from google.auth.credentials import Credentials
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from google.oauth2 import service_account
from googleapiclient.discovery import Resource, build

from ._helpers import var
from .activities import register_no_activity
from .connections import check_connection_name, refresh_oauth
from .errors import ConnectionInitError, EnvVarError, OAuthRefreshError

_SCOPE = "https://www.googleapis.com/auth/"
# The permission scopes each builder asks for, as AutoKitteh's SDK does.
GMAIL_SCOPES = [_SCOPE + "gmail.modify", _SCOPE + "gmail.settings.basic"]
CALENDAR_SCOPES = [_SCOPE + "calendar", _SCOPE + "calendar.events"]
DRIVE_SCOPES = [_SCOPE + "drive.file"]
FORMS_SCOPES = [_SCOPE + "forms.body", _SCOPE + "forms.responses.readonly"]
SHEETS_SCOPES = [_SCOPE + "spreadsheets"]
YOUTUBE_SCOPES = [_SCOPE + "youtube.readonly", _SCOPE + "youtube.upload", _SCOPE + "youtube"]

# A client's resources only build requests, and each pickles to megabytes (the API's whole
# description): calling them runs directly, and a request's execute() is the activity.
register_no_activity([Resource])

_GOOGLE_ID = re.compile(r"(?:.*/d/(?:e/)?)?([\w-]{20,})")


def gmail_client(connection: str, **kwargs: Any) -> Resource:
    """A Gmail API (v1) client for a ``gmail`` connection. ``kwargs`` go to
    ``googleapiclient.discovery.build`` (``client_options``, ...)."""
    return _build("gmail", "v1", "gmail", connection, GMAIL_SCOPES, kwargs)


def google_calendar_client(connection: str, **kwargs: Any) -> Resource:
    """A Google Calendar API (v3) client for a ``googlecalendar`` connection."""
    return _build("calendar", "v3", "googlecalendar", connection, CALENDAR_SCOPES, kwargs)


def google_drive_client(connection: str, **kwargs: Any) -> Resource:
    """A Google Drive API (v3) client for a ``googledrive`` connection."""
    return _build("drive", "v3", "googledrive", connection, DRIVE_SCOPES, kwargs)


def google_forms_client(connection: str, **kwargs: Any) -> Resource:
    """A Google Forms API (v1) client for a ``googleforms`` connection."""
    return _build("forms", "v1", "googleforms", connection, FORMS_SCOPES, kwargs)


def google_sheets_client(connection: str, **kwargs: Any) -> Resource:
    """A Google Sheets API (v4) client for a ``googlesheets`` connection."""
    return _build("sheets", "v4", "googlesheets", connection, SHEETS_SCOPES, kwargs)


def youtube_client(connection: str, **kwargs: Any) -> Resource:
    """A YouTube Data API (v3) client for a ``youtube`` connection."""
    return _build("youtube", "v3", "youtube", connection, YOUTUBE_SCOPES, kwargs)


def google_pydantic_ai_provider(connection: str, **kwargs: Any) -> Any:
    """A pydantic-ai ``GoogleProvider`` (Gemini) with the connection's ``api_key`` (needs
    pydantic-ai with its Google models)."""
    check_connection_name(connection)
    key = var(connection, "api_key")
    if not key:
        raise ConnectionInitError(connection)
    from pydantic_ai.providers.google import GoogleProvider  # only this helper needs it

    return GoogleProvider(api_key=key, **kwargs)


def google_creds(integration: str, connection: str, scopes: list[str], **kwargs: Any) -> Any:
    """Credentials of ``connection`` for ``googleapiclient.discovery.build``.

    Args:
        integration: the connection's integration (``googlesheets``, ...), which renews
            an OAuth token.
        connection: the connection's name.
        scopes: the permission scopes to ask for.
        **kwargs: for a service account, more arguments of its credentials (``subject``
            to act for a user of the domain, ``quota_project_id``, ...).

    Raises:
        ValueError: the connection name is invalid.
        ConnectionInitError: the connection has neither a JSON key nor an OAuth token.
        EnvVarError: its JSON key is not a service account's key, or its OAuth expiry is
            not a time.
        OAuthRefreshError: its OAuth token expired and could not be renewed.
    """
    check_connection_name(connection)
    if var(connection, "auth_type") == "oauth":
        return _user_creds(integration, connection, scopes)
    key = var(connection, "JSON")
    if not key:
        raise ConnectionInitError(connection)
    name = f"{connection}__JSON"
    try:
        info = json.loads(key)
    except ValueError as e:
        # The decoder's message gives a position, never the text (a private key).
        raise EnvVarError(name, f"not JSON ({e.args[0] if e.args else e})") from None
    if not isinstance(info, dict):
        raise EnvVarError(name, "not a service account's JSON key (not an object)")
    # Checked here, with messages that name fields only: google-auth's own quote values
    # (a private key that is not text is repr()ed whole).
    for field in _KEY_FIELDS:
        if not isinstance(info.get(field), str) or not info[field]:
            raise EnvVarError(name, f"not a usable service account key (no {field} text)")
    for field in _KEY_TEXT_FIELDS:
        if field in info and not isinstance(info[field], str):
            raise EnvVarError(name, f"not a usable service account key ({field} is not text)")
    try:
        make = service_account.Credentials.from_service_account_info
        return make(info, scopes=scopes, **kwargs)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):  # a private key that does not load
        raise EnvVarError(
            name, "not a usable service account key (its private_key is not a PEM private key)"
        ) from None


# The fields of a service account's JSON key google-auth needs, and others it reads.
_KEY_FIELDS = ("client_email", "token_uri", "private_key")
_KEY_TEXT_FIELDS = ("private_key_id", "project_id", "universe_domain", "type")


def google_id(url: str) -> str:
    """The id of a Google Doc, Form or Sheet in its URL (an id alone is returned as is)."""
    found = _GOOGLE_ID.match(url)
    if not found:
        raise ValueError(f'Invalid Google ID in "{url}"')
    return found.group(1)


def _build(
    api: str,
    version: str,
    integration: str,
    connection: str,
    scopes: list[str],
    kwargs: dict[str, Any],
) -> Resource:
    # AutoKitteh passes kwargs both to the credentials and to build(), so any of them
    # breaks one of the two; here they go to build() (google_creds takes the others).
    creds = google_creds(integration, connection, scopes)
    return build(api, version, credentials=creds, **kwargs)


def _user_creds(integration: str, connection: str, scopes: list[str]) -> Credentials:
    text = var(connection, "oauth_Expiry")
    token = var(connection, "oauth_AccessToken")
    if not text or not token:
        raise ConnectionInitError(connection)
    creds = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
        token=token,
        expiry=_expiry(connection, text),
        scopes=scopes,
        refresh_handler=_Refresher(integration, connection),
    )
    if creds.expired:
        try:
            creds.refresh(Request())  # type: ignore[no-untyped-call]
        except RefreshError as e:  # e.g. the server's token is already expired
            raise OAuthRefreshError(connection, str(e)) from e
    return creds


def _expiry(connection: str, text: str) -> datetime:
    """``oauth_Expiry`` as naive UTC: ISO 8601, or Go's ``2024-06-20 19:18:17.5 -0700 PDT``."""
    iso = re.sub(r"\.\d+", "", re.sub(r" [A-Z]+.*$", "", text.strip()))
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        raise EnvVarError(f"{connection}__oauth_Expiry", "not a time") from None
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


class _Refresher:
    """google-auth's refresh hook: a new token from the server, whose client secret the
    handler never sees (a class, not a closure: credentials must pickle)."""

    def __init__(self, integration: str, connection: str) -> None:
        self.integration, self.connection = integration, connection

    def __call__(self, request: Any, scopes: Any) -> tuple[str, datetime]:
        try:
            return refresh_oauth(self.integration, self.connection)
        except Exception as e:
            raise OAuthRefreshError(self.connection, str(e)) from e
