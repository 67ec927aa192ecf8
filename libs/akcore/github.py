"""GitHub webhook deliveries, as AutoKitteh's GitHub integration reads them (pure: no I/O).

A delivery is signed with the webhook's secret: ``X-Hub-Signature-256: sha256=<hex HMAC of
the raw body>`` (``X-Hub-Signature`` with sha1 from older senders). Its payload is the body
(``application/json``) or the form field ``payload``
(``application/x-www-form-urlencoded``); its event type is ``X-GitHub-Event``; its id,
``X-GitHub-Delivery``, is the same when GitHub redelivers it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import parse_qs

from .webhook import MAX_JSON_DEPTH, nested_deeper

_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
EVENT_TYPE_RE = re.compile(r"^[a-z][a-z_]{0,63}$")
MAX_SLASH_COMMANDS = 16
MAX_COMMAND_TEXT = 1024  # a command's raw line is cut to this many characters
# A slash_command event carries the delivery's data (actual_data) only up to this size;
# above it, the main event's id instead (16 commands must not copy a large payload 16 times).
MAX_COPIED_DATA = 64 * 1024
_FENCE_RE = re.compile(r"^\s*(```|~~~)")
# Events are read on their way by encoders, filters and workers that nest no deeper.
TOO_DEEP = f"the payload nests lists and objects more than {MAX_JSON_DEPTH} levels deep"


class DeliveryError(ValueError):
    """A delivery that cannot be read; the message says why (never the secret)."""


def signature_of(headers: dict[str, str]) -> str:
    """The delivery's signature as ``<algorithm>=<hex>``: ``X-Hub-Signature-256`` (SHA-256
    only), else ``X-Hub-Signature`` (SHA-1, from older senders); "" when unsigned."""
    if value := headers.get("x-hub-signature-256", ""):
        return value if value.startswith("sha256=") else "invalid"
    if value := headers.get("x-hub-signature", ""):
        return value if value.startswith("sha1=") else "invalid"
    return ""


def verify(secret: str, body: bytes, signature: str, unsigned_ok: bool = False) -> bool:
    """Whether ``signature`` (``sha256=<hex>`` or ``sha1=<hex>``) is the HMAC of ``body``
    with ``secret``, compared in constant time. Without a secret nothing is verified: an
    unsigned delivery passes only with ``unsigned_ok`` (a connection that says, with an
    empty ``pat_secret``, that its webhook has no secret)."""
    if not secret:
        return unsigned_ok and not signature
    algo, _, digest = signature.partition("=")
    hash_fn = _HASHES.get(algo)
    if hash_fn is None or not digest:
        return False
    expected = hmac.new(secret.encode(), body, hash_fn).hexdigest().encode()
    return hmac.compare_digest(expected, digest.encode("utf-8", "replace"))


def payload(body: bytes, content_type: str) -> dict[str, Any]:
    """The delivery's JSON payload; DeliveryError for another content type or bad JSON."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json":
        raw = body
    elif kind == "application/x-www-form-urlencoded":
        raw = (parse_qs(body.decode(errors="replace")).get("payload") or [""])[0].encode()
    else:
        raise DeliveryError(f"unsupported content type {content_type!r}")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise DeliveryError(TOO_DEEP) from None
    except ValueError:
        raise DeliveryError("the payload is not JSON") from None
    if nested_deeper(raw, data):
        raise DeliveryError(TOO_DEEP)
    if not isinstance(data, dict):
        raise DeliveryError("the payload is not a JSON object")
    return data


def event_type(headers: dict[str, str]) -> str:
    """``X-GitHub-Event``; DeliveryError when missing or not an event name."""
    name = headers.get("x-github-event", "")
    if not EVENT_TYPE_RE.match(name):
        raise DeliveryError("missing or invalid X-GitHub-Event header")
    return name


# Where each event's markdown text is, for slash commands.
_BODIES = {
    "issue_comment": ("comment", "body"),
    "pull_request_review_comment": ("comment", "body"),
    "pull_request_review": ("review", "body"),
    "pull_request": ("pull_request", "body"),
    "issues": ("issue", "body"),
    "discussion": ("discussion", "body"),
    "discussion_comment": ("comment", "body"),
    "commit_comment": ("comment", "body"),
}


def slash_commands(kind: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The slash commands of the event's text: lines that start with ``/`` in column 0,
    outside fenced code blocks; at most ``MAX_SLASH_COMMANDS``."""
    where = _BODIES.get(kind)
    obj = data.get(where[0]) if where else None
    text = obj.get(where[1]) if where and isinstance(obj, dict) else None
    if not isinstance(text, str):
        return []
    commands: list[dict[str, Any]] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE_RE.match(line):
            fenced = not fenced
            continue
        line = line.rstrip()
        if fenced or not line.startswith("/"):
            continue
        line = line[:MAX_COMMAND_TEXT]
        fields = line.split()
        name = fields[0][1:]
        if not name:
            continue
        commands.append({"name": name, "args": fields[1:], "raw": line})
        if len(commands) == MAX_SLASH_COMMANDS:
            break
    return commands


def events(
    kind: str, data: dict[str, Any], size: int, main_event_id: str
) -> list[tuple[str, dict[str, Any]]]:
    """The events one delivery (``size`` bytes) makes, as (event type, data): the
    delivery's own, its data with ``slash_commands`` added, then a ``slash_command`` event
    for each command, with the delivery's data as ``actual_data`` (over
    ``MAX_COPIED_DATA``: ``{"event_id": <the main event's id>}`` instead)."""
    main = {**data, "slash_commands": slash_commands(kind, data)}
    actual = main if size <= MAX_COPIED_DATA else {"event_id": main_event_id}
    extra = [
        ("slash_command", {"command": c, "actual_data": actual, "actual_event_type": kind})
        for c in main["slash_commands"]
    ]
    return [(kind, main), *extra]
