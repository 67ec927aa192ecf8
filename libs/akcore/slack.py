"""Slack's requests to an app, as AutoKitteh's Slack integration reads them (pure: no I/O).

Every request is signed with the app's signing secret (Slack's "v0" scheme):
``X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<timestamp>:<raw body>">`` with
``X-Slack-Request-Timestamp`` within five minutes of now. Three kinds arrive: Events API
callbacks (JSON), slash commands and interactions (forms).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import parse_qs

from .webhook import MAX_JSON_DEPTH, nested_deeper

MAX_SKEW = 300  # seconds between Slack's timestamp and now
# Events are read on their way by encoders, filters and workers that nest no deeper.
TOO_DEEP = f"the JSON nests lists and objects more than {MAX_JSON_DEPTH} levels deep"

# The inner event types the Events API route accepts (others: 501, as AutoKitteh).
EVENT_TYPES = frozenset(
    {
        "app_home_opened",
        "app_mention",
        "app_uninstalled",
        "tokens_revoked",
        "channel_archive",
        "channel_created",
        "channel_left",
        "channel_rename",
        "channel_unarchive",
        "group_archive",
        "group_close",
        "group_deleted",
        "group_left",
        "group_open",
        "group_rename",
        "group_unarchive",
        "member_joined_channel",
        "member_left_channel",
        "message",
        "reaction_added",
        "reaction_removed",
    }
)

# Fields AutoKitteh's Slack events always have (absent ones as empty values), by type;
# what Slack sends beyond them is kept too.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "app_mention": {
        "type": "",
        "user": "",
        "team": "",
        "channel": "",
        "ts": "",
        "event_ts": "",
        "thread_ts": "",
        "text": "",
        "blocks": [],
        "client_msg_id": "",
    },
    "message": {
        "type": "",
        "subtype": "",
        "hidden": False,
        "text": "",
        "blocks": [],
        "edited": None,
        "user": "",
        "app_id": "",
        "bot_id": "",
        "bot_profile": None,
        "parent_user_id": "",
        "team": "",
        "channel": "",
        "channel_type": "",
        "ts": "",
        "event_ts": "",
        "thread_ts": "",
        "reply_count": 0,
        "reply_users": [],
        "reactions": [],
        "message": None,
        "previous_message": None,
        "deleted_ts": "",
        "root": None,
        "client_msg_id": "",
    },
    "reaction_added": {
        "type": "",
        "user": "",
        "reaction": "",
        "item": None,
        "item_user": "",
        "event_ts": "",
    },
}
_DEFAULTS["reaction_removed"] = _DEFAULTS["reaction_added"]
_MEMBERSHIP = {
    "type": "",
    "channel": "",
    "channel_type": "",
    "user": "",
    "inviter": "",
    "is_moved": False,
    "event_ts": "",
    "team": "",
    "enterprise": "",
}


class RequestError(ValueError):
    """A request that cannot be read; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_timestamp(value: str, now: float) -> int:
    """The request's timestamp: 401 when missing, 403 when not a number or stale."""
    if not value:
        raise RequestError(401, "missing X-Slack-Request-Timestamp")
    try:
        ts = int(value)
    except ValueError:
        raise RequestError(403, "invalid X-Slack-Request-Timestamp") from None
    if abs(now - ts) > MAX_SKEW:
        raise RequestError(403, "stale request (X-Slack-Request-Timestamp over 5 minutes off)")
    return ts


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is Slack's v0 signature of the request with ``secret``."""
    if not secret or not signature.startswith("v0="):
        return False
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = b"v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace"))


def _json(raw: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except RecursionError:
        raise RequestError(400, TOO_DEEP) from None
    except ValueError:
        raise RequestError(400, "the body is not JSON") from None
    if nested_deeper(raw, data):
        raise RequestError(400, TOO_DEEP)
    if not isinstance(data, dict):
        raise RequestError(400, "the body is not a JSON object")
    return data


MAX_FORM_FIELDS = 64  # Slack's forms have about 15


def form(body: bytes) -> dict[str, str]:
    """A form body's fields (the first value of each)."""
    try:
        fields = parse_qs(body.decode(errors="replace"), max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise RequestError(400, "too many form fields") from None
    return {k: v[0] for k, v in fields.items()}


def parse(kind: str, body: bytes) -> dict[str, Any]:
    """The request, read once: an Events API envelope (``event``), a command's form fields
    (``command``) or an interaction's payload (``interaction``: the form field ``payload``,
    JSON)."""
    if kind == "event":
        return _json(body)
    if kind == "command":
        return form(body)
    return _json(form(body).get("payload", ""))


def _text(value: Any) -> str:
    """An id field: text, or "" for anything else Slack would never send."""
    return value if isinstance(value, str) else ""


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def routing_ids(kind: str, p: dict[str, Any]) -> tuple[str, str, str]:
    """(app id, enterprise id, team id) that name the connection a request (``parse``d) is
    for."""
    if kind == "event":
        return _text(p.get("api_app_id")), "", _text(p.get("team_id"))
    if kind == "command":
        return _text(p.get("api_app_id")), _text(p.get("enterprise_id")), _text(p.get("team_id"))
    enterprise = ""
    if p.get("is_enterprise_install") is True:
        user = _object(p.get("user"))
        enterprise = _text(_object(user.get("enterprise_user")).get("enterprise_id"))
    return _text(p.get("api_app_id")), enterprise, _text(_object(p.get("team")).get("id"))


def event_of(env: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(event type, data) of an Events API envelope; None for the app's own events (a
    reply of the handler must not start it again). RequestError(501) for other types."""
    inner = env.get("event")
    if not isinstance(inner, dict):
        raise RequestError(400, "the envelope has no event")
    kind = str(inner.get("type", ""))
    if kind not in EVENT_TYPES:
        raise RequestError(501, f"event type {kind!r} is not supported")
    if _own(inner, kind, env):
        return None
    defaults = _DEFAULTS.get(kind) or (_MEMBERSHIP if "member" in kind or "_left" in kind else {})
    return kind, {**defaults, **inner}


def _own(inner: dict[str, Any], kind: str, env: dict[str, Any]) -> bool:
    """Whether the event is the app's own (an authorization's user made it)."""
    grants = env.get("authorizations")
    users = (
        {_text(a.get("user_id")) for a in grants if isinstance(a, dict)}
        if isinstance(grants, list)
        else set()
    )
    users.discard("")
    if not users:
        return False
    if kind in ("app_mention", "message", "reaction_added", "reaction_removed"):
        actor = _text(inner.get("user"))
        if not actor and kind == "message":
            actor = _text(_object(inner.get("message")).get("user"))
    elif kind in ("channel_created", "channel_rename"):
        actor = _text(_object(inner.get("channel")).get("creator"))
    else:
        actor = _text(inner.get("inviter")) or _text(inner.get("user"))
    return bool(actor) and actor in users


# A slash command's fields, as AutoKitteh names them.
COMMAND_FIELDS = (
    "team_id",
    "team_domain",
    "enterprise_id",
    "enterprise_name",
    "api_app_id",
    "channel_id",
    "channel_name",
    "user_id",
    "command",
    "text",
    "response_url",
    "trigger_id",
)


def command_data(fields: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {k: fields.get(k, "") for k in COMMAND_FIELDS}
    data["is_enterprise_install"] = fields.get("is_enterprise_install", "").lower() == "true"
    return data


def command_reply(data: dict[str, Any]) -> dict[str, str]:
    """What Slack shows the user who ran a command: the command, as AutoKitteh answers."""
    return {
        "response_type": "ephemeral",
        "text": f"Your command: `{data['command']} {data['text']}`",
    }
