"""Decorators that steer which calls run as activities."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ACTIVITY_ATTR = "__ak_activity__"
INHIBIT_ATTR = "__ak_inhibit__"

# Callables (and classes) whose calls never run as activities.
no_activity: set[Any] = set()


def activity(fn: F) -> F:
    """Marks ``fn`` (sync or async) to run whole, with everything it calls, as one activity."""
    setattr(fn, ACTIVITY_ATTR, True)
    return fn


_inhibit = threading.local()


def inhibited() -> int:
    """How many ``inhibit_activities`` functions are running in this thread."""
    return getattr(_inhibit, "depth", 0)


def inhibit_activities(fn: F) -> F:
    """No call made while ``fn`` runs becomes an activity (stackable; sync or async).

    Its calls run again on replay, so keep it to fast, deterministic set-up work.
    """
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            _inhibit.depth = inhibited() + 1
            try:
                return await fn(*args, **kwargs)
            finally:
                _inhibit.depth = inhibited() - 1

        setattr(async_wrapper, INHIBIT_ATTR, True)
        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _inhibit.depth = inhibited() + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _inhibit.depth = inhibited() - 1

    setattr(wrapper, INHIBIT_ATTR, True)
    return wrapper  # type: ignore[return-value]


def register_no_activity(items: Iterable[Callable[..., Any]]) -> None:
    """Makes calls to ``items`` run directly; a class exempts its construction and methods."""
    no_activity.update(items)
