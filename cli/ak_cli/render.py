"""Output: one line per object, as text (prototext-like) or JSON (``-j``)."""

from __future__ import annotations

import base64
import json
from typing import Any

import typer


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
