"""How the projects' values stores are laid out in the ``AK_VALUES`` KV bucket."""

from __future__ import annotations

import base64
import json
from typing import Any

from .errors import InvalidArgument

MAX_VALUE = 64 * 1024


def kv_key(project_id: str, key: str) -> str:
    return f"{project_id}.{base64.urlsafe_b64encode(key.encode()).decode().rstrip('=')}"


def user_key(kv: str) -> str:
    enc = kv.partition(".")[2]
    return base64.urlsafe_b64decode(enc + "=" * (-len(enc) % 4)).decode()


def encode(value: Any, published: bool) -> bytes:
    data = json.dumps({"v": value, "p": published}).encode()
    if len(data) > MAX_VALUE:
        raise InvalidArgument(f"value is {len(data)} bytes, over the {MAX_VALUE} byte limit")
    return data


def decode(raw: bytes | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None
