"""The runner's fault hook: its rules, and that it is off unless set."""

from __future__ import annotations

import pytest
from ak_runner.faults import Faults, Rule, parse
from akcore.errors import Unavailable


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


def test_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AK_TEST__FAULTS", raising=False)
    assert Faults.from_env().rules == []


def test_actions() -> None:
    faults = Faults(parse("no_heartbeats started; unavailable step step=3"))
    assert faults.at("started", "h.py:f", 1) is True
    assert faults.at("step", "h.py:f", 1, 2) is False
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
