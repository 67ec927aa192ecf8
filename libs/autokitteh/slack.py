"""Slack clients for a project's Slack connection (``slack-sdk ~= 3.33``).

``slack_client`` reads only the connection's token variables in the session's environment,
as AutoKitteh's helper does. Importing this module needs slack_sdk (``autokitteh[all]``).
"""

from __future__ import annotations

import os
import re
from typing import Any

from slack_sdk import WebClient

from .connections import check_connection_name
from .errors import ConnectionInitError

# Where a connection's bot token may be, newest name first (the last two are legacy names).
_TOKEN_VARS = ("oauth_access_token", "private_bot_token", "oauth_AccessToken", "BotToken")


def slack_client(connection: str, **kwargs: Any) -> WebClient:
    """A ``slack_sdk.WebClient`` with ``connection``'s bot token, checked with
    ``auth.test`` (a call to Slack: a bad or revoked token raises ``SlackApiError``).
    ``kwargs`` go to the client (``base_url``, ``timeout``, ...)."""
    check_connection_name(connection)
    token = next((t for t in (os.getenv(f"{connection}__{v}") for v in _TOKEN_VARS) if t), None)
    if not token:
        raise ConnectionInitError(connection)
    client = WebClient(token, **kwargs)
    client.auth_test().validate()  # type: ignore[no-untyped-call]
    return client


def normalize_channel_name(name: str) -> str:
    """A valid Slack channel name made from ``name``: lowercase, quotes dropped, other
    characters than ``a-z 0-9 _ -`` made ``-``, runs of ``-``/``_`` made one ``-``, at most
    50 characters, without a leading or trailing ``-``."""
    if not name:
        return ""
    name = re.sub(r"['\"]", "", name.lower().strip())
    name = re.sub(r"[^a-z0-9_-]", "-", name)
    name = re.sub(r"[_-]{2,}", "-", name)[:50]
    if name and name[0] == "-":  # (AutoKitteh's raises IndexError for a name of quotes)
        name = name[1:]
    if name and name[-1] == "-":
        name = name[:-1]
    return name
