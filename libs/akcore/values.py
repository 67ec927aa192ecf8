"""How the projects' values stores are laid out in the ``AK_VALUES`` KV bucket. Entries
rest sealed with the data key (``akcore.datakey``), each bound to its project and key."""

from __future__ import annotations

import base64
import json
from typing import Any

from .datakey import Keyring
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


def seal(keys: Keyring, kv: str, raw: bytes) -> bytes:
    """An entry as it rests under KV key ``kv``."""
    return keys.seal(raw, kv.encode())


def open_entry(keys: Keyring, kv: str, sealed: bytes | None) -> dict[str, Any] | None:
    """The entry kept under KV key ``kv`` (None when there is none); raises SealError."""
    return decode(keys.open(sealed, kv.encode())) if sealed else None
