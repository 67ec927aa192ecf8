"""Output: one line per object, as text (prototext-like) or JSON (``-j``)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import typer

# What text from a session (its prints, errors, log) may not send to a terminal as is:
# control characters (escape sequences that set the title, move the cursor or rewrite a
# line with a carriage return) but tab and newline, the bidirectional marks and overrides
# that show text in another order than it has, and Unicode's own line separators.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def terminal_safe(text: str) -> str:
    """``text`` with what a terminal would act on written out as escapes (``\\x1b``,
    ``\\r``, ``\\u202e``), so that what a handler printed, maybe from a stranger's
    webhook, cannot rewrite what its reader sees. ``-j`` output has the exact text."""
    return _UNSAFE.sub(_escape, text)


def _escape(found: re.Match[str]) -> str:
    return repr(found[0])[1:-1]


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def text_fields(obj: dict[str, Any], keys: list[str] | None = None) -> str:
    """``key:"value" other:3`` for the non-empty fields, in the given order."""
    parts = []
    for k in keys or list(obj):
        v = obj.get(k)
        if v in (None, "", {}, []) or v is False:
            continue
        if isinstance(v, bool) or isinstance(v, (int, float)):
            parts.append(f"{k}:{str(v).lower() if isinstance(v, bool) else v}")
        elif isinstance(v, (dict, list)):
            parts.append(f"{k}:{json.dumps(jsonable(v), separators=(',', ':'))}")
        else:
            parts.append(f"{k}:{json.dumps(str(v))}")
    return " ".join(parts)


def emit(obj: Any, as_json: bool, keys: list[str] | None = None, label: str = "") -> None:
    if as_json:
        typer.echo(json.dumps(jsonable(obj), separators=(",", ":")))
    elif isinstance(obj, dict):
        line = text_fields(obj, keys)
        typer.echo(f"{label}: {line}" if label else line)
    else:
        typer.echo(str(obj))


def emit_list(items: list[Any], as_json: bool, keys: list[str] | None = None) -> None:
    for item in items:
        emit(item, as_json, keys)
