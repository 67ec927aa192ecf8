"""Decorators that steer which calls run as activities."""

from __future__ import annotations

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


def inhibit_activities(fn: F) -> F:
    """Marks ``fn`` so that no call made while it runs becomes an activity."""
    setattr(fn, INHIBIT_ATTR, True)
    return fn


def register_no_activity(items: Iterable[Callable[..., Any]]) -> None:
    """Makes calls to ``items`` run directly; a class exempts its construction and methods."""
    no_activity.update(items)
