"""CEL filters over events: compile once (cached), evaluate with ``data`` and ``event_type``."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes

VARIABLES = frozenset({"data", "event_type"})


class FilterError(ValueError):
    """The filter text is not a valid CEL expression."""


@dataclass
class Verdict:
    """What one filter said about one event (also the evaluator process's answer frame)."""

    matched: bool
    problem: str = ""  # why it could not decide: an error, a result not a bool, its budget


class _Unread:
    """A value of a ``LazyMap`` not converted yet."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return f"<unread {type(self.raw).__name__}>"


class LazyMap(celtypes.MapType):
    """A CEL map over a plain dict whose values become CEL values when first read, and stay
    so: a filter reading ``data.method`` leaves a 500 KB ``data.body`` alone, and the
    filters of one event share what any of them converted.

    cel-python reads maps through ``[]`` and ``get`` (``data.x`` is ``data["x"]``) and
    iterates their keys, which are converted up front."""

    def __init__(self, raw: Mapping[Any, Any]) -> None:
        super().__init__()
        slots: dict[Any, Any] = self  # set with dict's own methods: MapType's check keys
        for k, v in raw.items():
            dict.__setitem__(slots, celtypes.StringType(str(k)), _Unread(v))

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if type(value) is _Unread:
            value = to_cel(value.raw)
            slots: dict[Any, Any] = self
            dict.__setitem__(slots, key, value)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        if not self.valid_key_type(key):
            raise TypeError(f"unsupported key type: {type(key)}")
        if key in self:
            return self[key]
        if default is not None:
            return default
        raise KeyError(key)

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self[k] for k in self]

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return [(k, self[k]) for k in self]

    def unread(self) -> Iterator[str]:
        """The keys whose values no filter has read yet."""
        slots: dict[Any, Any] = self
        return (k for k, v in dict.items(slots) if type(v) is _Unread)


def to_cel(value: Any) -> Any:
    """A plain value (as events carry) as a CEL value; maps inside it convert lazily."""
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
        return LazyMap(value)
    if isinstance(value, (list, tuple)):
        return celtypes.ListType([to_cel(v) for v in value])
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


def variables(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The variables a filter sees for one event. Make them once per event and judge all
    of its filters with them: the event's data is converted as filters read it, once."""
    return {"data": LazyMap(data), "event_type": celtypes.StringType(event_type)}


def _reason(e: BaseException) -> str:
    # celpy's errors carry (message, python exception type, ...) as their arguments.
    return str(e.args[0]) if e.args else type(e).__name__


def judge(expr: str, variables: Mapping[str, Any]) -> Verdict:
    """Evaluates one filter against ``variables(...)``. An empty filter matches; an invalid
    one, an evaluation error (a missing key, say) or a result other than a bool is no
    match, with the reason."""
    if is_empty(expr):
        return Verdict(True)
    try:
        prog = compile_filter(expr.strip())
    except FilterError as e:
        return Verdict(False, str(e))
    try:
        result = prog.evaluate(variables)
    except Exception as e:  # celpy raises its CELEvalError at the top, among others
        return Verdict(False, f"evaluation error: {_reason(e)}")
    if isinstance(result, Exception):  # and returns it from some paths
        return Verdict(False, f"evaluation error: {_reason(result)}")
    if isinstance(result, (bool, celtypes.BoolType)):
        return Verdict(bool(result))
    return Verdict(False, f"the filter's result is {result!r}, not a bool")


def matches(expr: str | None, event_type: str, data: Mapping[str, Any]) -> bool:
    """True when the filter accepts the event (one filter, evaluated here, no budget)."""
    return is_empty(expr) or judge(expr or "", variables(event_type, data)).matched


def event_type_matches(trigger_event_type: str | None, event_type: str) -> bool:
    return trigger_event_type in (None, "", "*") or trigger_event_type == event_type
