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

_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
EVENT_TYPE_RE = re.compile(r"^[a-z][a-z_]{0,63}$")
MAX_SLASH_COMMANDS = 16
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


class DeliveryError(ValueError):
    """A delivery that cannot be read; the message says why (never the secret)."""


def signature_of(headers: dict[str, str]) -> str:
    """The signature header's value (``X-Hub-Signature-256``, else ``X-Hub-Signature``)."""
    return headers.get("x-hub-signature-256") or headers.get("x-hub-signature") or ""


def verify(secret: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` (``<sha1|sha256|sha512>=<hex>``) is the HMAC of ``body`` with
    ``secret``, compared in constant time. With no secret, only an unsigned delivery passes
    (a connection that has no webhook secret accepts anything: ``ak connection test`` warns)."""
    if not secret:
        return not signature
    algo, _, digest = signature.partition("=")
    hash_fn = _HASHES.get(algo.strip().lower())
    if hash_fn is None or not digest:
        return False
    expected = hmac.new(secret.encode(), body, hash_fn).hexdigest()
    return hmac.compare_digest(expected, digest.strip().lower())


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
    except (ValueError, RecursionError):
        raise DeliveryError("the payload is not JSON") from None
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
        fields = line.split()
        name = fields[0][1:]
        if not name:
            continue
        commands.append({"name": name, "args": fields[1:], "raw": line})
        if len(commands) == MAX_SLASH_COMMANDS:
            break
    return commands


def events(kind: str, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The events one delivery makes, as (event type, data): the delivery's own, its data
    with ``slash_commands`` added, then a ``slash_command`` event for each command."""
    main = {**data, "slash_commands": slash_commands(kind, data)}
    extra = [
        ("slash_command", {"command": c, "actual_data": main, "actual_event_type": kind})
        for c in main["slash_commands"]
    ]
    return [(kind, main), *extra]
