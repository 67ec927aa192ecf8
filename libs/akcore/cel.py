"""CEL filters over events: compile once (cached), evaluate with ``data`` and ``event_type``."""

from __future__ import annotations

import datetime
import functools
import logging
from typing import Any

import celpy
from celpy import celtypes

log = logging.getLogger(__name__)

VARIABLES = frozenset({"data", "event_type"})


class FilterError(ValueError):
    """The filter text is not a valid CEL expression."""


def _to_cel(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, (bytes, bytearray)):
        return celtypes.BytesType(bytes(value))
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(str(k)): _to_cel(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return celtypes.ListType([_to_cel(v) for v in value])
    if isinstance(value, datetime.datetime):
        return celtypes.TimestampType(value)
    if isinstance(value, datetime.timedelta):
        return celtypes.DurationType(value)
    return celtypes.StringType(repr(value))


_ENV = celpy.Environment()


def _str(x: Any) -> celtypes.StringType:
    return celtypes.StringType(x)


def _split(s: Any, sep: Any, limit: Any = -1) -> celtypes.ListType:
    n = int(limit)
    if n == 0:
        return celtypes.ListType([])
    parts = str(s).split(str(sep), n - 1) if n > 0 else str(s).split(str(sep))
    return celtypes.ListType([_str(p) for p in parts])


def _replace(s: Any, old: Any, new: Any, limit: Any = -1) -> celtypes.StringType:
    return _str(str(s).replace(str(old), str(new), int(limit)))


def _substring(s: Any, start: Any, end: Any = None) -> celtypes.StringType:
    return _str(str(s)[int(start) : None if end is None else int(end)])


# The CEL strings extension (member functions), which cel-python does not ship.
STRING_FUNCTIONS: dict[str, Any] = {
    "lowerAscii": lambda s: _str(str(s).lower()),
    "upperAscii": lambda s: _str(str(s).upper()),
    "trim": lambda s: _str(str(s).strip()),
    "split": _split,
    "join": lambda items, sep="": _str(str(sep).join(str(i) for i in items)),
    "replace": _replace,
    "indexOf": lambda s, sub: celtypes.IntType(str(s).find(str(sub))),
    "lastIndexOf": lambda s, sub: celtypes.IntType(str(s).rfind(str(sub))),
    "substring": _substring,
    "charAt": lambda s, i: _str(str(s)[int(i) : int(i) + 1]),
}


@functools.lru_cache(maxsize=4096)
def compile_filter(expr: str) -> Any:
    """Returns a runnable program for ``expr``; raises FilterError when it does not parse."""
    try:
        ast = _ENV.compile(expr)
    except Exception as e:  # celpy raises its own parse error types
        raise FilterError(f"invalid filter: {e}".strip()) from None
    return _ENV.program(ast, functions=STRING_FUNCTIONS)


def is_empty(expr: str | None) -> bool:
    return not expr or expr.strip() in ("", ".")


def validate_filter(expr: str) -> None:
    if not is_empty(expr):
        compile_filter(expr.strip())


def matches(expr: str | None, event_type: str, data: dict[str, Any]) -> bool:
    """True when the filter accepts the event. An evaluation error counts as no match."""
    if is_empty(expr):
        return True
    assert expr is not None
    try:
        prog = compile_filter(expr.strip())
        result = prog.evaluate(
            {"data": _to_cel(data), "event_type": celtypes.StringType(event_type)}
        )
    except FilterError:
        return False
    except Exception as e:
        log.info("filter %r: evaluation error, no match: %s", expr, e)
        return False
    if isinstance(result, Exception):  # celpy returns CELEvalError values
        log.info("filter %r: evaluation error, no match: %s", expr, result)
        return False
    return result is True or (isinstance(result, celtypes.BoolType) and bool(result))


def event_type_matches(trigger_event_type: str | None, event_type: str) -> bool:
    return trigger_event_type in (None, "", "*") or trigger_event_type == event_type
