"""Integrations a manifest connection may name, and what a connection puts in a worker's
environment.

``http``: a named bundle of vars for calling an HTTP API. Its vars reach handlers as
``<connection>__<var>``; ``bearer_token`` (or ``basic_username`` and ``basic_password``)
also give ``<connection>__auth``, the ready-made Authorization value.

``github``: AutoKitteh's GitHub connection: its vars (``pat``, ``pat_key``, ``pat_secret``;
or a GitHub app's ``app_id``, ``install_key__<app>__<installation>``, ``client_secret``)
route GitHub's webhook deliveries to it (``ak_ingress.github``) and feed
``autokitteh.github.github_client``.

``slack``: AutoKitteh's Slack connection: ``install_ids`` (``<app>/<enterprise>/<team>``)
routes Slack's requests to it, ``private_signing_secret`` (else the server's
``SLACK_SIGNING_SECRET``) checks them (``ak_ingress.slack``); ``oauth_access_token`` or
``private_bot_token`` feed ``autokitteh.slack.slack_client``.
"""

from __future__ import annotations

import base64

from .errors import MAX_SHOWN

INTEGRATIONS = ("http", "github", "slack")


def routes_an_installation(name: str) -> bool:
    """Whether connection var ``name`` routes a GitHub or Slack installation of the server's
    own app to the connection (``install_key__<app>__<installation>``, ``install_ids``):
    deliveries signed with the app's secret, which the server cannot tell apart by
    project, so whoever sets the var receives that installation's."""
    return name == "install_ids" or name.startswith("install_key__")


# AutoKitteh's other integrations: a connection of one is refused with a clear line (the
# SDK's client helpers read the same variables from project vars meanwhile).
NOT_YET = (
    "chatgpt",
    "anthropic",
    "twilio",
    "aws",
    "asana",
    "notion",
    "pipedrive",
    "reddit",
    "kubernetes",
    "telegram",
    "discord",
    "airtable",
    "linear",
    "jira",
    "confluence",
    "gmail",
    "googlesheets",
    "googlecalendar",
    "googledrive",
    "googleforms",
    "gemini",
    "hubspot",
    "salesforce",
    "zoom",
)


def unknown(name: str) -> str:
    """Why a connection cannot use integration ``name``."""
    supported = ", ".join(INTEGRATIONS)
    if len(name) > MAX_SHOWN:
        name = name[:MAX_SHOWN] + "..."
    if name in NOT_YET:
        return (
            f'integration "{name}" is not supported yet by this server (supported: {supported}); '
            f"meanwhile set its variables as project vars (<connection>__<var>) for the SDK's "
            f"client helpers"
        )
    return f'integration "{name}" not found (available: {supported})'


DESCRIPTIONS = {
    "http": "A named set of vars for calling an HTTP API (no inbound events).",
    "github": "GitHub: webhook deliveries to a PAT connection or a GitHub app's installations.",
    "slack": "Slack: Events API, slash commands and interactions of a Slack app.",
}
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_ID_MAP = {"i": "1", "l": "1", "!": "1", "u": "v", "o": "0", "@": "0", "$": "s"}


def integration_id(name: str) -> str:
    """AutoKitteh's integration id, derived from the unique name: ``int_3kth``, six
    characters of the name in the id alphabet, then the 64-bit FNV-1 of ``"int," + name``."""
    hint = "".join(c if c in _ID_ALPHABET else _ID_MAP.get(c, "0") for c in name[:6].lower()).rjust(
        6, "0"
    )
    h = 0xCBF29CE484222325
    for b in f"int,{name}".encode():
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h ^= b
    return f"int_3kth{hint}{h:016x}"


def connection_env(name: str, connection_id: str, variables: dict[str, str]) -> dict[str, str]:
    """The environment variables of one connection, given its vars in plaintext."""
    env = {f"{name}__{k}": v for k, v in variables.items()}
    env[f"{name}__connection_id"] = connection_id
    if "auth" not in variables:
        if variables.get("bearer_token"):
            env[f"{name}__auth"] = f"Bearer {variables['bearer_token']}"
        elif variables.get("basic_username"):
            pair = f"{variables['basic_username']}:{variables.get('basic_password', '')}"
            env[f"{name}__auth"] = f"Basic {base64.b64encode(pair.encode()).decode()}"
    return env
