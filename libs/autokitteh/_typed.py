"""Parsing a mapping that crossed a process boundary into a frozen dataclass, checked.

Standard library only: the worker's frames and the journal's records both use it. A field
declared ``int`` takes ints only (not bools), ``float`` takes ints too, and a field with a
default may be left out; anything else is a ``TypeMismatch`` naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeVar

T = TypeVar("T")

# The annotations the typed messages use, as written (postponed annotations are strings).
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (float, int),
    "bytes": (bytes,),
    "bytes | None": (bytes, type(None)),
    "str | None": (str, type(None)),
    "dict[str, str]": (dict,),
    "dict[str, Any]": (dict,),
    "list[str]": (list,),
    "list[str] | None": (list, type(None)),
}


class TypeMismatch(ValueError):
    """The mapping does not fit the dataclass."""


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, tuple[type, ...], bool], ...]:
    out = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append((f.name, _ACCEPTS[str(f.type)], required))
    return tuple(out)


def typed(cls: type[T], raw: Any, what: str) -> T:
    """``cls(**raw)`` once every field present has its declared type; ``what`` names the
    message in errors."""
    if not isinstance(raw, dict):
        raise TypeMismatch(f"{what}: expected a map, got {type(raw).__name__}")
    args: dict[str, Any] = {}
    for name, accepts, required in _fields(cls):  # type: ignore[arg-type]
        if name not in raw:
            if required:
                raise TypeMismatch(f"{what}: {name} is missing")
            continue
        value = raw[name]
        if not isinstance(value, accepts) or (isinstance(value, bool) and bool not in accepts):
            got, want = type(value).__name__, accepts[0].__name__
            raise TypeMismatch(f"{what}: {name} is {got}, not {want}")
        args[name] = float(value) if accepts[0] is float else value  # type: ignore[arg-type]
    return cls(**args)


def untyped(msg: Any) -> dict[str, Any]:
    """The mapping of a typed message: its fields, leaving out those at their defaults."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
            continue
        out[f.name] = value
    return out
