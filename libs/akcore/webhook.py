"""Turns an HTTP request into webhook event data (AutoKitteh's shape, reference section 3.2),
and what a webhook's slug leads to."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MAX_BODY = 512 * 1024
# A JSON body nested deeper is kept as text only (``json`` is None): deeper values would
# overflow the recursion of what reads events on their way (encoders, filters, workers).
MAX_JSON_DEPTH = 100
# Fields of a form body parsed into ``body.form`` (more: None, the handler reads
# ``body.text``), as web frameworks bound them: parsing is ~1.6 µs a field, in ingress's loop.
MAX_FORM_FIELDS = 1000
WEBHOOKS_PREFIX = "/webhooks/"
_FORM_METHODS = {"POST", "PUT", "PATCH"}


@dataclass(frozen=True)
class WebhookTarget:
    """The trigger a webhook's slug leads to (the store's ``webhook.lookup`` answer), as
    ingress keeps it, also in the KV bucket ``AK_WEBHOOKS`` (``wire.encode``)."""

    trigger_id: str
    project_id: str
    name: str = ""
    is_sync: bool = False

    @classmethod
    def from_lookup(cls, answer: dict[str, Any]) -> WebhookTarget:
        """From the store's answer (a map with at least ``trigger_id`` and ``project_id``)."""
        return cls(
            trigger_id=str(answer["trigger_id"]),
            project_id=str(answer["project_id"]),
            name=str(answer.get("name") or ""),
            is_sync=bool(answer.get("is_sync")),
        )


def canonical_header(name: str) -> str:
    """``content-type`` -> ``Content-Type``, as Go's net/http does."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _joined(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return {k: ", ".join(vs) for k, vs in out.items()}


def _first_json(body: bytes) -> Any:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    text = text.lstrip()
    if not text:
        return None
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion
        return None
    if nested_deeper(text[:end], value):
        return None
    if "\\u" in text and not _encodable(value):  # a lone surrogate, e.g. "\\ud800"
        return None
    return value


def _encodable(value: Any) -> bool:
    """Whether every string in it is valid Unicode (JSON may escape a lone surrogate,
    which no UTF-8 encoder takes: such a body is kept as text, never refused)."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def nested_deeper(raw: str | bytes, value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value``, parsed from the JSON text ``raw`` (that value's text alone), nests
    lists and maps more than ``limit`` levels. Read from the text, its strings left out:
    walking the value took ~0.5 s of ingress's loop for a 512 KiB body of 170,000 empty
    maps, anyone's to send to a public webhook; the text's brackets take ~20 ms."""
    data = raw.encode(errors="surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") <= limit:  # (most have too few brackets to)
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def json_containers(body: bytes) -> int:
    """How many lists and maps the JSON ``body`` may hold: its brackets, those inside its
    strings too (~1 ms for 512 KiB; telling them apart took as long as parsing it)."""
    return body.count(b"[") + body.count(b"{")


# A JSON string (in a text JSON parsed: its escapes are well formed), and what is not a
# bracket; an opening bracket goes one level deeper, a closing one back.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _text(body: bytes) -> str | None:
    if not body:
        return None
    try:
        return body.decode()
    except UnicodeDecodeError:
        return None


def _form(method: str, content_type: str, body: bytes) -> dict[str, str] | None:
    media = content_type.split(";", 1)[0].strip().lower()
    if method not in _FORM_METHODS or media != "application/x-www-form-urlencoded":
        return None
    if body.count(b"&") >= MAX_FORM_FIELDS:  # (parsing 170,000 held ingress's loop ~0.3 s)
        return None
    try:
        return _joined(parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        return None


def path_suffix(path: str, slug: str) -> str:
    """The part of the path after ``/webhooks/<slug>/`` ("" for the bare slug)."""
    rest = path[len(WEBHOOKS_PREFIX) + len(slug) :] if path.startswith(WEBHOOKS_PREFIX) else ""
    return rest.lstrip("/") if rest.startswith("/") else ""


def normalize_request(
    method: str, raw_url: str, headers: Iterable[tuple[str, str]], body: bytes, slug: str
) -> dict[str, Any]:
    """Builds ``event.data`` for a webhook request.

    Args:
        method: the request method as received.
        raw_url: path and query exactly as received (``/webhooks/x/a?b=1``).
        headers: (name, value) pairs in any case; repeated names are joined with ", ".
        body: the raw request body.
        slug: the webhook slug the request was routed by.
    """
    parts = urlsplit(raw_url)
    path = unquote(parts.path)
    hdrs = _joined((canonical_header(k), v) for k, v in headers if k.lower() != "host")
    method = method.upper()
    return {
        "method": method,
        "raw_url": raw_url,
        "url": {
            "path": path,
            "path_suffix": path_suffix(path, slug),
            "query": _joined(parse_qsl(parts.query, keep_blank_values=True)),
        },
        "headers": hdrs,
        "trailers": {},
        "body": {
            "bytes": body or None,
            "text": _text(body),
            "json": _first_json(body),
            "form": _form(method, hdrs.get("Content-Type", ""), body),
        },
    }
