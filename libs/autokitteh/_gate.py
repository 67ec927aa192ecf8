"""Which calls become activities (reference section 4.4): the gate's decision, no I/O.

Run directly: calls inside an activity, while the module loads, while inhibited, marked
no-activity, SDK functions and methods, deterministic builtins and stdlib, user code.
``@activity`` forces an activity. ``time.sleep`` outside an activity is a durable sleep.
Everything else runs as an activity.
"""

from __future__ import annotations

import datetime
import enum
import json
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from .activities import ACTIVITY_ATTR, INHIBIT_ATTR, no_activity


class Decision(enum.Enum):
    DIRECT = "direct"
    ACTIVITY = "activity"
    SLEEP = "sleep"


BUILTIN_TYPES: tuple[type, ...] = (
    str,
    bytes,
    bytearray,
    dict,
    list,
    set,
    frozenset,
    tuple,
    int,
    float,
    complex,
    bool,
    range,
    slice,
    memoryview,
    type(None),
)

DETERMINISTIC_MODULES = frozenset(
    """
    abc array base64 bisect builtins bz2 cmath collections contextlib copy csv dataclasses
    decimal enum fnmatch fractions functools graphlib gzip hashlib heapq html ipaddress
    itertools lzma math operator pprint re shlex statistics string struct textwrap tomllib
    traceback types typing unicodedata urllib.error urllib.parse xml zipfile zlib
    _collections _functools _operator _sre _struct _heapq _bisect _hashlib _blake2 _sha256
    _md5 _sha1 _sha512 _sha3 _decimal _pydecimal _csv _string binascii _json
""".split()
)

_dt = datetime
DETERMINISTIC_CALLABLES: frozenset[Any] = frozenset(
    {
        json.dumps,
        json.loads,
        _dt.date,
        _dt.datetime,
        _dt.time,
        _dt.timedelta,
        _dt.timezone,
        _dt.date.fromisoformat,
        _dt.date.fromordinal,
        _dt.date.fromisocalendar,
        _dt.datetime.fromisoformat,
        _dt.datetime.strptime,
        _dt.datetime.combine,
        _dt.datetime.fromordinal,
        _dt.datetime.fromisocalendar,
        _dt.time.fromisoformat,
    }
)

_ASYNCIO_HELPERS = (
    "run",
    "gather",
    "create_task",
    "ensure_future",
    "wait",
    "wait_for",
    "as_completed",
    "shield",
    "Queue",
    "Event",
    "TaskGroup",
    "timeout",
    "get_event_loop",
    "get_running_loop",
    "current_task",
    "iscoroutine",
)


_asyncio_helpers: frozenset[Any] | None = None


def _is_asyncio_helper(fn: Any) -> bool:
    """One of asyncio's helpers. Looked up once asyncio is imported (by the user's code:
    a worker does not import it itself, it costs a third of the worker's start)."""
    global _asyncio_helpers
    if _asyncio_helpers is None:
        asyncio = sys.modules.get("asyncio")
        if asyncio is None:
            return False
        _asyncio_helpers = frozenset(
            getattr(asyncio, n) for n in _ASYNCIO_HELPERS if hasattr(asyncio, n)
        )
    return _hashable_in(fn, _asyncio_helpers)


def _module_of(fn: Any) -> str:
    target = getattr(fn, "__func__", fn)
    mod = getattr(target, "__module__", None)
    if mod is None:
        owner = getattr(target, "__self__", None)
        if isinstance(owner, types.ModuleType):
            mod = owner.__name__
    return mod if isinstance(mod, str) else ""


def _in_modules(mod: str, modules: frozenset[str]) -> bool:
    while mod:
        if mod in modules:
            return True
        mod = mod.rpartition(".")[0]
    return False


def _hashable_in(fn: Any, group: frozenset[Any] | set[Any]) -> bool:
    try:
        return fn in group
    except TypeError:  # unhashable callables
        return False


def is_deterministic(fn: Any) -> bool:
    """Builtin containers and their methods, exceptions, and the stdlib allow-list."""
    if isinstance(fn, type):
        if fn in BUILTIN_TYPES or issubclass(fn, BaseException):
            return True
    owner = getattr(fn, "__self__", None)
    if isinstance(fn, (types.BuiltinMethodType, types.MethodWrapperType)) and isinstance(
        owner, (*BUILTIN_TYPES, BaseException)
    ):
        return True
    if isinstance(fn, types.MethodType) and isinstance(owner, BaseException):
        return True
    objclass = getattr(fn, "__objclass__", None)
    if isinstance(objclass, type) and (
        objclass in BUILTIN_TYPES or issubclass(objclass, BaseException)
    ):
        return True
    if _hashable_in(fn, DETERMINISTIC_CALLABLES) or _is_asyncio_helper(fn):
        return True
    return _in_modules(_module_of(fn), DETERMINISTIC_MODULES)


def is_sdk(fn: Any) -> bool:
    """An ``autokitteh`` function, class, or method of an autokitteh object."""
    if _module_of(fn).partition(".")[0] == "autokitteh":
        return True
    owner = getattr(fn, "__self__", None)
    return owner is not None and type(owner).__module__.partition(".")[0] == "autokitteh"


def is_no_activity(fn: Any) -> bool:
    """Registered with ``register_no_activity``; a registered class covers its methods."""
    if not no_activity:
        return False
    if _hashable_in(fn, no_activity) or _hashable_in(getattr(fn, "__func__", None), no_activity):
        return True
    owner = getattr(fn, "__self__", None)
    cls = owner if isinstance(owner, type) else type(owner) if owner is not None else None
    if cls is not None and any(_hashable_in(c, no_activity) for c in cls.__mro__):
        return True
    qual = getattr(fn, "__qualname__", "")
    return any(
        isinstance(c, type)
        and qual.startswith(c.__qualname__ + ".")
        and _module_of(fn) == c.__module__
        for c in no_activity
    )


def decide(
    fn: Callable[..., Any],
    *,
    in_activity: bool,
    loading: bool,
    inhibited: bool,
    is_user: Callable[[Any], bool],
) -> Decision:
    """The gate's rule for one call (see the module docstring)."""
    if fn is time.sleep:
        return Decision.DIRECT if in_activity else Decision.SLEEP
    if in_activity or loading or inhibited:
        return Decision.DIRECT
    try:
        marked = getattr(fn, ACTIVITY_ATTR, None)
    except Exception:
        marked = None
    if marked is True:
        return Decision.ACTIVITY
    if marked is False or getattr(fn, INHIBIT_ATTR, None) is True:
        return Decision.DIRECT  # an inhibit_activities wrapper runs its function directly
    if is_no_activity(fn) or is_sdk(fn) or is_deterministic(fn) or is_user(fn):
        return Decision.DIRECT
    return Decision.ACTIVITY


def short_name(fn: Any) -> str:
    """The name a journal record gives a call: the text after the last dot of its qualname."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str):
        name = type(fn).__name__
    return name.rpartition(".")[2]
