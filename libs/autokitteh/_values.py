"""AutoKitteh's values as data: what crosses from one session to another (signal payloads,
child inputs and results, stored values) is tagged JSON, never pickle.

A value is JSON data (dict, list, str, int, float, bool, None) or bytes, datetime, date,
timedelta, set, frozenset or tuple, nested. Types JSON lacks become objects
``{"__ak__": <type>, "v": <data>}``; plain JSON data encodes as itself, so stored values stay
readable. Subclasses arrive as their base type (an ``AttrDict`` as a dict, a webhook ``Body``
as bytes). Decoding builds only those types: it never imports or calls anything else.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from .errors import MalformedValue, NotAValue

TAG = "__ak__"
MAX_DEPTH = 100
MAX_SIZE = 16 * 1024 * 1024  # (over the NATS message limit: that one says what to do)
ALLOWED = "use JSON types, bytes, datetime, timedelta, set, tuple"


class _Refused(Exception):
    """An object that is not a value, ``path`` deep (made a NotAValue at the top)."""

    def __init__(self, obj: Any, why: str = "") -> None:
        self.obj, self.why, self.path = obj, why, ""


def to_data(value: Any, what: str = "value") -> Any:
    """``value`` as JSON data; raises NotAValue naming the object and where it is."""
    try:
        return _encode(value, 0)
    except _Refused as e:
        why = e.why or f"{_type_name(e.obj)} is not a value; {ALLOWED}"
        raise NotAValue(f"{what}{e.path}: {why}") from None


def from_data(data: Any, what: str = "value") -> Any:
    """The value that ``to_data`` made ``data`` of; raises MalformedValue."""
    try:
        return _decode(data, 0)
    except (TypeError, ValueError, KeyError, OverflowError, RecursionError) as e:
        raise MalformedValue(f"{what}: not an encoded value ({e})") from None


def dumps(value: Any, what: str = "value") -> bytes:
    """``value`` encoded (UTF-8 JSON); raises NotAValue, or MalformedValue over MAX_SIZE."""
    data = to_data(value, what)
    try:
        raw = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as e:  # an int of more digits than Python converts
        raise MalformedValue(f"{what}: {e}") from None
    if len(raw) > MAX_SIZE:
        raise MalformedValue(f"{what}: {len(raw)} bytes encoded, over the {MAX_SIZE} byte limit")
    return raw


def loads(raw: bytes, what: str = "value") -> Any:
    """The value ``dumps`` encoded in ``raw``; raises MalformedValue."""
    if len(raw) > MAX_SIZE:
        raise MalformedValue(f"{what}: {len(raw)} bytes, over the {MAX_SIZE} byte limit")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise MalformedValue(f"{what}: not an encoded value ({e})") from None
    return from_data(data, what)


# --- encoding


def _encode(v: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _Refused(v, f"nested deeper than {MAX_DEPTH} levels (or it contains itself)")
    if v is None or v is True or v is False:
        return v
    if isinstance(v, str):
        return str.__str__(v)  # (a str enum's own __str__ gives its name)
    if isinstance(v, int):
        return int.__index__(v)
    if isinstance(v, float):
        return float.__float__(v) if math.isfinite(v) else _tagged("float", repr(float(v)))
    if isinstance(v, (bytes, bytearray)):
        return _tagged("bytes", base64.b64encode(v).decode())
    if isinstance(v, datetime):  # (a datetime is also a date)
        return _tagged("datetime", v.isoformat())
    if isinstance(v, date):
        return _tagged("date", v.isoformat())
    if isinstance(v, timedelta):
        return _tagged("timedelta", [v.days, v.seconds, v.microseconds])
    if isinstance(v, dict):
        return _encode_dict(v, depth)
    if isinstance(v, list):
        return _items(v, depth)
    for kind in (tuple, frozenset, set):
        if isinstance(v, kind):
            return _tagged(kind.__name__, _items(v, depth))
    raise _Refused(v)


def _encode_dict(d: dict[Any, Any], depth: int) -> Any:
    if all(type(k) is str for k in d) and TAG not in d:
        return {k: _at(repr(k), x, depth) for k, x in d.items()}
    # other keys (numbers, tuples, ...) or a key that looks like a tag: as pairs
    pairs = [[_at("key", k, depth), _at(repr(k), x, depth)] for k, x in d.items()]
    return _tagged("dict", pairs)


def _items(xs: Any, depth: int) -> list[Any]:
    return [_at(str(i), x, depth) for i, x in enumerate(xs)]


def _at(where: str, x: Any, depth: int) -> Any:
    try:
        return _encode(x, depth + 1)
    except _Refused as e:
        if e.why:  # too deep: the path would only repeat itself
            raise
        if len(where) > 40:
            where = where[:37] + "..."
        e.path = f"[{where}]{e.path}"
        raise


def _tagged(kind: str, data: Any) -> dict[str, Any]:
    return {TAG: kind, "v": data}


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


# --- decoding


def _decode(d: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if d is None or isinstance(d, (bool, int, float, str)):
        return d
    if isinstance(d, list):
        return [_decode(x, depth + 1) for x in d]
    if not isinstance(d, dict):
        raise TypeError(f"{type(d).__name__} is not JSON data")
    if TAG not in d:
        for k in d:
            if not isinstance(k, str):
                raise TypeError(f"a key is {type(k).__name__}, not str")
        return {k: _decode(x, depth + 1) for k, x in d.items()}
    if d.keys() != {TAG, "v"}:
        raise ValueError(f"a tagged object has the keys {sorted(map(str, d))}")
    make = _MAKERS.get(d[TAG]) if isinstance(d[TAG], str) else None
    if make is None:
        raise ValueError(f"unknown type tag {d[TAG]!r}")
    return make(d["v"], depth + 1)


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{type(v).__name__}, not str")
    return v


def _list(v: Any, depth: int) -> list[Any]:
    if not isinstance(v, list):
        raise TypeError(f"{type(v).__name__}, not a list")
    return [_decode(x, depth) for x in v]


def _timedelta(v: Any, depth: int) -> timedelta:
    if not (isinstance(v, list) and len(v) == 3 and all(type(x) is int for x in v)):
        raise ValueError("a timedelta is [days, seconds, microseconds]")
    return timedelta(days=v[0], seconds=v[1], microseconds=v[2])


def _dict(v: Any, depth: int) -> dict[Any, Any]:
    pairs = _list(v, depth)
    if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ValueError("a dict is a list of [key, value] pairs")
    return {k: x for k, x in pairs}


def _float(v: Any, depth: int) -> float:
    if v not in ("nan", "inf", "-inf"):
        raise ValueError(f"{v!r} is not nan, inf or -inf")
    return float(v)


_MAKERS: dict[str, Callable[[Any, int], Any]] = {
    "bytes": lambda v, _: base64.b64decode(_text(v), validate=True),
    "datetime": lambda v, _: datetime.fromisoformat(_text(v)),
    "date": lambda v, _: date.fromisoformat(_text(v)),
    "timedelta": _timedelta,
    "float": _float,
    "tuple": lambda v, depth: tuple(_list(v, depth)),
    "set": lambda v, depth: set(_list(v, depth)),
    "frozenset": lambda v, depth: frozenset(_list(v, depth)),
    "dict": _dict,
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
