"""Parses an operation's arguments (a decoded msgpack map) into its typed request, once,
where the request enters a service: unknown fields and wrong types are refused there."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import InvalidArgument

T = TypeVar("T")

# Lists and maps a field's value may nest (its own counted): as deep as a webhook's JSON
# (``webhook.MAX_JSON_DEPTH``) and the values between sessions (``autokitteh._values``).
# Deeper values overflow the recursion of what carries them on (a runner pickling an
# event for its worker failed at ~500, the worker's decoding at ~400, ``ak event get``).
MAX_DEPTH = 100

_HINTS: dict[type, dict[str, Any]] = {}


def parse(op: str, cls: type[T], args: Any) -> T:
    """``cls`` (a dataclass) from ``args``. A field sent as null keeps its default.

    Raises:
        InvalidArgument: naming the operation and the field that is unknown, missing or
            of the wrong type.
    """
    if not isinstance(args, Mapping):
        raise InvalidArgument(f"{op}: the request must be a map of field names to values")
    hints = _hints(cls)
    unknown = sorted(str(k) for k in args if k not in hints)
    if unknown:
        raise InvalidArgument(
            f"{op}: unknown field {unknown[0]!r} (known fields: {', '.join(hints) or 'none'})"
        )
    given: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = args.get(f.name)
        if value is None and _has_default(f):
            continue
        if value is None and f.name not in args and not _allows(hints[f.name], None):
            raise InvalidArgument(f"{op}: missing field {f.name!r}")
        if not _allows(hints[f.name], value):
            raise InvalidArgument(
                f"{op}: field {f.name!r} must be {_describe(hints[f.name])}, "
                f"not {value if _too_big(value) else type(value).__name__}"
            )
        if _has_nul(hints[f.name], value):
            raise InvalidArgument(
                f"{op}: field {f.name!r} holds a NUL character (\\0), which no text here may "
                "(a database cannot store it, nor an environment variable hold it)"
            )
        if _nested_deeper(value, MAX_DEPTH):
            raise InvalidArgument(
                f"{op}: field {f.name!r} nests lists and maps more than {MAX_DEPTH} levels "
                "deep: send flatter data"
            )
        given[f.name] = value
    return cls(**given)


def _has_nul(hint: Any, value: Any) -> bool:
    """Whether text that ``hint`` types (a ``str``, a ``list[str]``'s items, a
    ``dict[str, ...]``'s keys and text values; not a ``dict[str, Any]``'s keys, which are
    data with its values) holds a NUL character: PostgreSQL refuses
    it in any text it stores or compares (a slug with one in a lookup, an event type in the
    events table), and so do environment variables (a var's value). What ``Any`` types (an
    event's data, a session's inputs) is sealed as bytes: NUL is fine there."""
    if hint is Any:  # (not looked into: it may be nested ~1,000 deep)
        return False
    if isinstance(value, str):
        return "\x00" in value and _texts(hint)
    if isinstance(value, list):
        return any(_has_nul(_item(hint, 0), v) for v in value)
    if isinstance(value, dict):
        if _item(hint, 1) is Any:  # (data: its keys are sealed with its values)
            return False
        return any(
            _has_nul(_item(hint, 0), k) or _has_nul(_item(hint, 1), v) for k, v in value.items()
        )
    return False


def _texts(hint: Any) -> bool:
    """Whether ``hint`` is text (or a union with it), not ``Any``."""
    if hint is str:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_texts(h) for h in typing.get_args(hint))
    return False


def _item(hint: Any, index: int) -> Any:
    """The type of a ``list``'s items (0) or a ``dict``'s keys (0) and values (1) in
    ``hint`` (``Any`` when it says none)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next((h for h in typing.get_args(hint) if typing.get_origin(h)), Any)
    args = typing.get_args(hint)
    return args[index] if len(args) > index else Any


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether lists and maps nest more than ``limit`` levels in ``value`` (walked without
    recursion: a decoded msgpack value may be nested ~1,000 deep; a map's keys too, where
    msgpack makes lists tuples)."""
    if not isinstance(value, _NESTING):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, _NESTING))
    return False


_NESTING = (dict, list, tuple)


def fields_of(cls: type) -> dict[str, Any]:
    """A request type's field names and their types."""
    return dict(_hints(cls))


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        names = {f.name for f in dataclasses.fields(cls)}
        hints = {k: v for k, v in typing.get_type_hints(cls).items() if k in names}
        _HINTS[cls] = hints
    return hints


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _allows(hint: Any, value: Any) -> bool:
    """Whether ``value`` (plain decoded msgpack) fits the type ``hint``."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_allows(h, value) for h in typing.get_args(hint))
    if hint is None or hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_allows(item, v) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _allows(key, k) and _allows(item, v) for k, v in value.items()
        )
    if hint is int:  # what a database column holds (msgpack carries up to 2**64 - 1)
        return isinstance(value, int) and not isinstance(value, bool) and not _too_big(value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _too_big(value: Any) -> bool:
    return type(value) is int and not -(2**63) <= value < 2**63


_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        key, item = typing.get_args(hint)
        return f"a map of {_describe(key)} to {_describe(item)}"
    if hint is bytes:
        return "bytes"
    if hint is Any:
        return "any value"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))
