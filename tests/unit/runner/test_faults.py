"""The runner's fault hook: its rules, and that it is off unless set."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ak_runner.faults import Faults, Rule, parse
from akcore.errors import AKError, Unavailable


def test_rules_parse() -> None:
    rules = parse("crash journaled step=2 entry=h.py:f; stall=1.5 step attempt=any ;")
    assert rules == [
        Rule("crash", "journaled", step=2, entry="h.py:f"),
        Rule("stall", "step", seconds=1.5, attempt=0),
    ]
    assert rules[0].matches("journaled", 2, "h.py:f", 1)
    assert not rules[0].matches("journaled", 2, "h.py:f", 2)  # the first attempt only
    assert not rules[0].matches("journaling", 2, "h.py:f", 1)
    assert rules[1].matches("step", 7, "x.py:g", 3)


@pytest.mark.parametrize("text", ["crash", "explode step", "crash nowhere"])
def test_a_bad_rule_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="AK_TEST__FAULTS"):
        parse(text)


def test_a_bad_setting_is_said_once_as_the_runner_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AKError: akcore.service logs its message and exits 2 (a ValueError was a
    traceback, and `ak up` restarted the runner over and over)."""
    monkeypatch.setenv("AK_TEST__FAULTS", "garbage")
    with pytest.raises(AKError, match="AK_TEST__FAULTS: 'garbage' needs an action and a point"):
        Faults.from_env()


def test_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AK_TEST__FAULTS", raising=False)
    assert Faults.from_env().rules == []


def test_actions() -> None:
    faults = Faults(
        parse("no_heartbeats started; forgotten_heartbeats journaled; unavailable step step=3")
    )
    assert faults.at("started", "h.py:f", 1) == "no_heartbeats"
    assert faults.at("journaled", "h.py:f", 1, 2) == "forgotten_heartbeats"
    assert faults.at("step", "h.py:f", 1, 2) == ""
    with pytest.raises(Unavailable, match="fault injected at step of step 3"):
        faults.at("step", "h.py:f", 1, 3)


def test_a_rule_at_a_point_is_armed_there_without_firing() -> None:
    """The runner gives no go-ahead in advance for a step a rule waits at (``armed``)."""
    faults = Faults(parse("crash step step=2 entry=h.py:f"))
    assert faults.armed("step", "h.py:f", 1, 2)  # (a crash would kill the test)
    assert not faults.armed("step", "h.py:f", 1, 3)
    assert not faults.armed("step", "h.py:g", 1, 2)
    assert not faults.armed("step", "h.py:f", 2, 2)  # the first attempt only
    assert not faults.armed("journaled", "h.py:f", 1, 2)


def test_hold_is_a_fault_of_the_points_that_wait_it_out() -> None:
    rules = parse("hold step step=2 entry=h.py:f file=$MARKER_DIR/go; hold read attempt=any")
    assert rules == [
        Rule("hold", "step", step=2, entry="h.py:f", file="$MARKER_DIR/go"),
        Rule("hold", "read", attempt=0),
    ]
    with pytest.raises(ValueError, match="hold is a fault of the points"):
        parse("hold journaled step=2")


async def test_a_live_step_is_held_until_its_file_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held at step 2 of the first attempt only, until the test makes the file."""
    monkeypatch.setenv("MARKER_DIR", str(tmp_path))
    faults = Faults(parse("hold step step=2 entry=h.py:f file=$MARKER_DIR/go"))
    assert faults.armed("step", "h.py:f", 1, 2)  # the worker must ask for it
    for point, entry, attempt, step in [
        ("step", "h.py:f", 1, 1),
        ("step", "h.py:f", 2, 2),
        ("step", "h.py:g", 1, 2),
        ("journaled", "h.py:f", 1, 2),
    ]:
        await asyncio.wait_for(faults.held(point, entry, attempt, step), 5)  # not held
    held = asyncio.create_task(faults.held("step", "h.py:f", 1, 2))
    await _run_others()
    assert not held.done()
    (tmp_path / "go").touch()
    await asyncio.wait_for(held, 5)


async def test_a_live_step_held_without_a_file_waits_for_a_stop() -> None:
    faults = Faults(parse("hold step step=1"))
    stopped = asyncio.Event()
    held = asyncio.create_task(faults.held("step", "h.py:f", 1, 1, stopped))
    await _run_others()
    assert not held.done()
    stopped.set()
    await asyncio.wait_for(held, 5)


async def _run_others() -> None:
    """Lets the tasks that can run run (a held one waits, whatever the time)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_nats_closed_needs_the_runners_connection() -> None:
    """(``tests/e2e/test_nats_closed.py`` has the server close it.)"""
    faults = Faults(parse("nats_closed step step=2"))
    assert faults.at("step", "h.py:f", 1, 1) == ""
    with pytest.raises(RuntimeError, match="no NATS connection"):
        faults.at("step", "h.py:f", 1, 2)
