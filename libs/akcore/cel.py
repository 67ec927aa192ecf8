"""CEL filters over events: checked for size, compiled once (cached), evaluated with
``data`` and ``event_type``."""

from __future__ import annotations

import collections
import datetime
import logging
import operator
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import celpy
import re2
from celpy import celtypes
from celpy.evaluation import CELEvalError

from . import cellimits
from .cellimits import OverLimit, check_built

VARIABLES = frozenset({"data", "event_type"})
# Compiled programs kept, the most recently used first: at most this many, and at most this
# many tokens of filters in all (a program takes ~3.5 KB per token: ~60 MB).
CACHE_ENTRIES = 4096
CACHE_TOKENS = 16384

# cel-python logs the arguments of a function that failed (an event's data, maybe
# megabytes of it) at ERROR, to standard error when nothing else is set up: never.
logging.getLogger("celpy").setLevel(logging.CRITICAL + 1)


class FilterError(ValueError):
    """The filter text is not a valid CEL expression, or is over a limit on its size."""


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
# cel-python's parser keeps the text it parses on itself (for its error messages): one
# parse at a time (the store validates manifests on several threads, the runner off its loop).
_PARSING = threading.Lock()


def _str(x: Any) -> celtypes.StringType:
    return celtypes.StringType(x)


# The functions below that can make something longer than what they were given check its
# size first (``cellimits``): one call must not take gigabytes.


def _split(s: Any, sep: Any, limit: Any = -1) -> celtypes.ListType:
    text, sep, n = str(s), str(sep), int(limit)
    if n == 0:
        return celtypes.ListType([])
    if sep:
        count = text.count(sep) + 1
        check_built("split()", min(count, n) if n > 0 else count, "items")
    parts = text.split(sep, n - 1) if n > 0 else text.split(sep)
    return celtypes.ListType([_str(p) for p in parts])


def _join(items: Any, sep: Any = "") -> celtypes.StringType:
    sep, size = str(sep), 0
    parts: list[str] = []
    for item in items:
        part = str(item)
        size += len(part) + (len(sep) if parts else 0)
        check_built("join()", size, "characters or more")
        parts.append(part)
    return _str(sep.join(parts))


def _replace(s: Any, old: Any, new: Any, limit: Any = -1) -> celtypes.StringType:
    text, old, new, n = str(s), str(old), str(new), int(limit)
    count = text.count(old)  # (an empty ``old`` is found between every two characters)
    size = len(text) + (min(count, n) if n >= 0 else count) * (len(new) - len(old))
    if size > len(text):
        check_built("replace()", size, "characters")
    return _str(text.replace(old, new, n))


def _substring(s: Any, start: Any, end: Any = None) -> celtypes.StringType:
    return _str(str(s)[int(start) : None if end is None else int(end)])


_SEQUENCES = (str, bytes, list)
_UNITS = {str: "characters", bytes: "bytes", list: "items"}


def _add(a: Any, b: Any) -> Any:
    """CEL's ``+``; two strings, bytes or lists are measured first."""
    if isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES):
        unit = next(u for t, u in _UNITS.items() if isinstance(a, t))
        check_built("+", len(a) + len(b), unit)
    return operator.add(a, b)


# re2 writes a pattern that does not parse to standard error (the dispatcher's log): the
# pattern may be made of the event's values.
_QUIET = re2.Options()
_QUIET.log_errors = False


def _matches(s: Any, pattern: Any) -> Any:
    """CEL's ``matches``, as cel-python's (its arguments as they are: a number or a map is
    no overload), without re2's log line."""
    try:
        return celtypes.BoolType(re2.search(pattern, s, options=_QUIET) is not None)
    except re2.error as e:
        return CELEvalError("match error", type(e), None)
    except TypeError as e:
        return CELEvalError("no such overload", type(e), None)


# The CEL strings extension (member functions), which cel-python does not ship, ``+`` and
# ``matches``.
STRING_FUNCTIONS: dict[str, Any] = {
    "lowerAscii": lambda s: _str(str(s).lower()),
    "upperAscii": lambda s: _str(str(s).upper()),
    "trim": lambda s: _str(str(s).strip()),
    "split": _split,
    "join": _join,
    "replace": _replace,
    "indexOf": lambda s, sub: celtypes.IntType(str(s).find(str(sub))),
    "lastIndexOf": lambda s, sub: celtypes.IntType(str(s).rfind(str(sub))),
    "substring": _substring,
    "charAt": lambda s, i: _str(str(s)[int(i) : int(i) + 1]),
    "_+_": _add,
    "matches": _matches,
}


def _compile(expr: str) -> tuple[Any, int]:
    """A runnable program for ``expr`` and its number of tokens; raises FilterError when it
    is over a limit on its size (measured before it is parsed) or does not parse."""
    try:
        tokens = cellimits.measure(expr)
        with _PARSING:
            try:
                ast = _ENV.compile(expr)
            except Exception as e:  # celpy raises its own parse error types
                raise FilterError(f"invalid filter: {e}".strip()) from None
            cellimits.check_depth(ast)
            return _ENV.program(ast, functions=STRING_FUNCTIONS), tokens
    except cellimits.TooBig as e:
        raise FilterError(f"invalid filter: {e}") from None


class Programs:
    """Compiled filters, the most recently used kept, within ``CACHE_ENTRIES`` and
    ``CACHE_TOKENS`` (what a program takes grows with its filter's tokens)."""

    def __init__(self, entries: int = CACHE_ENTRIES, tokens: int = CACHE_TOKENS) -> None:
        self.entries, self.tokens = entries, tokens
        self.kept_tokens = 0
        self.compiled = 0  # filters compiled (a cache miss each)
        self._kept: collections.OrderedDict[str, tuple[Any, int]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, expr: str) -> Any:
        """The program for ``expr``, compiled if not kept; raises FilterError."""
        kept = self._kept.get(expr)
        if kept is not None:
            self._kept.move_to_end(expr)
            return kept[0]
        program, tokens = _compile(expr)
        self.compiled += 1
        self._kept[expr] = (program, tokens)
        # Counted again, not kept up to date: a filter's budget may stop it anywhere here.
        self.kept_tokens = sum(t for _, t in self._kept.values())
        while len(self._kept) > self.entries or self.kept_tokens > self.tokens:
            self.kept_tokens -= self._kept.popitem(last=False)[1][1]
        return program

    def clear(self) -> None:
        self._kept.clear()
        self.kept_tokens = 0


PROGRAMS = Programs()


def is_empty(expr: str | None) -> bool:
    return not expr or expr.strip() in ("", ".")


def validate_filter(expr: str) -> None:
    """Raises FilterError unless ``expr`` is a filter. What it compiled is not kept: where
    filters are only checked (a manifest, a subscribe), they are not run."""
    if not is_empty(expr):
        _compile(expr.strip())


def variables(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The variables a filter sees for one event. Make them once per event and judge all
    of its filters with them: the event's data is converted as filters read it, once."""
    return {"data": LazyMap(data), "event_type": celtypes.StringType(event_type)}


# Why a filter could not decide, worded without a value of the event: the reason is kept
# in the event's notes (SQL, the dispatcher's log) while the event's data rests sealed, and
# celpy's messages quote values (a string that has no fields, the whole activation of an
# undeclared name). Messages of these shapes are kept, reworded with names and types only
# (names and keys come from the filter's text); any other is named by its kind.
_FIXED = frozenset(
    {
        "modulus or divide by zero",
        "invalid_argument",
        "return error for overflow",
        "match error",
        "no such key",
        "no such overload",
    }
)
_NAME = r"([A-Za-z_][A-Za-z0-9_]{0,99})"
# (Each shape is matched from the message's start, so that a value it quotes cannot pass
# for one.)
_SHAPES = (
    (
        re.compile(rf"undeclared reference to '{_NAME}'(?: \(in activation|$)"),
        "undeclared reference to '{0}'",
    ),
    (re.compile(rf"no such member in mapping: '{_NAME}'$"), "no such member in mapping: '{0}'"),
    (
        re.compile(r".* with type: '<class '[\w.]*?(\w+)'>' does not support field selection$"),
        "a value of type {0} does not support field selection",
    ),
)
_OVERLOAD = re.compile(r"found no matching overload for Token\('RULE', '(\w+)'\) applied to '")
_TYPE = re.compile(r"<class '(?:[\w]+\.)*(\w+)'>")


def _reason(e: BaseException) -> str:
    # celpy's errors carry (message, python exception type, ...) as their arguments.
    message = str(e.args[0]) if e.args else ""
    if message in _FIXED:
        return message
    for shape, wording in _SHAPES:
        if found := shape.match(message):
            return wording.format(*found.groups())
    if found := _OVERLOAD.match(message):
        types = ", ".join(_TYPE.findall(message[found.end() :]))
        return f"no matching overload for {found.group(1)} applied to ({types})"
    return f"{type(e).__name__} (its message is not kept: it may quote the event)"


def judge(expr: str, variables: Mapping[str, Any]) -> Verdict:
    """Evaluates one filter against ``variables(...)``. An empty filter matches; an invalid
    one, an evaluation error (a missing key, say), a value built over the size limit or a
    result other than a bool is no match, with the reason. Raises MemoryError when the
    process ran out of memory."""
    if is_empty(expr):
        return Verdict(True)
    try:
        prog = PROGRAMS.get(expr.strip())
    except FilterError as e:
        return Verdict(False, str(e))
    try:
        result = prog.evaluate(variables)
    except OverLimit as e:
        return Verdict(False, str(e))
    except MemoryError:
        raise  # the caller knows the limit it ran into
    except Exception as e:  # celpy raises its CELEvalError at the top, among others
        return Verdict(False, f"evaluation error: {_reason(e)}")
    if isinstance(result, Exception):  # and returns it from some paths
        return Verdict(False, f"evaluation error: {_reason(result)}")
    if isinstance(result, (bool, celtypes.BoolType)):
        return Verdict(bool(result))
    return Verdict(False, f"the filter's result is of type {type(result).__name__}, not a bool")


def matches(expr: str | None, event_type: str, data: Mapping[str, Any]) -> bool:
    """True when the filter accepts the event (one filter, evaluated here, no budget)."""
    return is_empty(expr) or judge(expr or "", variables(event_type, data)).matched


def event_type_matches(trigger_event_type: str | None, event_type: str) -> bool:
    return trigger_event_type in (None, "", "*") or trigger_event_type == event_type
