"""The activity gate's decisions, one rule at a time (reference section 4.4)."""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import re
import threading
import time
import urllib.request
import uuid
from collections import OrderedDict
from typing import Any

import autokitteh
import pytest
from autokitteh import activities
from autokitteh._gate import Decision, decide, short_name

A, D, S = Decision.ACTIVITY, Decision.DIRECT, Decision.SLEEP


def user_fn() -> None: ...


class UserClass:
    def method(self) -> None: ...


def _is_user(fn: Any) -> bool:
    target = getattr(fn, "__func__", fn)
    return getattr(target, "__module__", None) == __name__


def gate(fn: Any, **state: bool) -> Decision:
    flags = {"in_activity": False, "loading": False, "inhibited": False, **state}
    return decide(fn, is_user=_is_user, **flags)


@pytest.mark.parametrize(
    "fn",
    [
        random.random,
        random.randint,
        datetime.datetime.now,
        datetime.datetime.now().isoformat,
        uuid.uuid4,
        threading.Lock,
        os.getenv,
        urllib.request.Request,
        urllib.request.urlopen,
        random.Random().randrange,
    ],
    ids=short_name,
)
def test_non_deterministic_calls_are_activities(fn: Any) -> None:
    assert gate(fn) is A


@pytest.mark.parametrize(
    "fn",
    [
        re.compile,
        json.dumps,
        json.loads,
        math.sqrt,
        OrderedDict,
        dict,
        str.upper,
        "x".upper,
        {}.get,
        [].append,
        ValueError,
        datetime.timedelta,
        datetime.datetime,
        datetime.datetime.fromisoformat,
        len,
        sorted,
        autokitteh.AttrDict,
        autokitteh.AttrDict().get,
    ],
    ids=short_name,
)
def test_deterministic_and_sdk_calls_run_directly(fn: Any) -> None:
    assert gate(fn) is D


def test_asyncio_helpers_run_directly() -> None:
    """The worker does not import asyncio itself (it is slow to import): its helpers are
    recognized once the user's code has imported it."""
    import asyncio

    for fn in (asyncio.gather, asyncio.create_task, asyncio.run, asyncio.Queue):
        assert gate(fn) is D


def test_user_code_runs_directly_unless_marked() -> None:
    assert gate(user_fn) is D
    assert gate(UserClass) is D
    assert gate(UserClass().method) is D

    @autokitteh.activity
    def marked() -> None: ...

    assert (
        decide(marked, in_activity=False, loading=False, inhibited=False, is_user=lambda f: True)
        is A
    )


def test_state_that_makes_everything_direct() -> None:
    for state in ({"in_activity": True}, {"loading": True}, {"inhibited": True}):
        assert gate(random.random, **state) is D


def test_sleep() -> None:
    assert gate(time.sleep) is S
    assert gate(time.sleep, in_activity=True) is D


def test_register_no_activity() -> None:
    rng = random.Random()
    # (What modules registered as they were imported, autokitteh.google's Resource, stays
    # registered for the tests that run after this one in the same process.)
    before = set(activities.no_activity)
    try:
        autokitteh.register_no_activity([random.randint, urllib.request.Request])
        assert gate(random.randint) is D
        assert gate(random.randrange) is A
        assert gate(urllib.request.Request) is D  # a class: its construction ...
        req = urllib.request.Request("http://localhost")
        assert gate(req.get_method) is D  # ... and its methods
        assert gate(rng.random) is A
    finally:
        activities.no_activity.clear()
        activities.no_activity.update(before)


def test_inhibit_activities_is_stackable() -> None:
    seen = []

    @autokitteh.inhibit_activities
    def outer() -> None:
        seen.append(activities.inhibited())
        inner()
        seen.append(activities.inhibited())

    @autokitteh.inhibit_activities
    def inner() -> None:
        seen.append(activities.inhibited())

    outer()
    assert seen == [1, 2, 1] and activities.inhibited() == 0
    assert gate(outer) is D  # the wrapper lives in the SDK but runs the user's function


def test_short_names() -> None:
    assert short_name(random.Random().randrange) == "randrange"
    assert short_name(urllib.request.Request) == "Request"
    assert short_name(UserClass.method) == "method"
