"""Planning a manifest against the store's state: the `[plan]` transcript and the actions."""

from __future__ import annotations

import pytest
from akcore.errors import InvalidArgument
from akcore.manifest import parse_manifest
from akcore.planning import Current, plan_manifest

from .test_manifest import SEED

TRIGGER = {
    "trigger_id": "trg_1",
    "name": "events",
    "source_type": "webhook",
    "event_type": "post",
    "filter": "",
    "call": "simple.py:greet",
    "schedule": "",
    "connection": "",
    "is_durable": True,
    "is_sync": False,
}


def _current(**over: object) -> Current:
    cur = Current(
        project_id="prj_1",
        vars={"USER": {"value": "Garfield", "secret": False, "description": ""}},
        triggers={"events": dict(TRIGGER)},
    )
    for k, v in over.items():
        setattr(cur, k, v)
    return cur


def test_first_deploy() -> None:
    plan = plan_manifest(parse_manifest(SEED), Current())
    assert plan.lines == [
        '[plan] project "py_simple": not found, will create',
        '[plan] var "py_simple/USER": not found, will set',
        '[plan] trigger "py_simple:webhook/events": not found, will create',
    ]
    assert [a.type for a in plan.actions] == ["create_project", "set_var", "create_trigger"]


def test_unchanged_redeploy() -> None:
    plan = plan_manifest(parse_manifest(SEED), _current())
    assert plan.lines == [
        '[plan] project "py_simple": found, id="prj_1"',
        '[plan] project "py_simple": no changes needed',
        '[plan] project "py_simple": found 0 connections',
        '[plan] project "py_simple": found 1 triggers',
        '[plan] trigger "py_simple:webhook/events": found, id="trg_1"',
        '[plan] trigger "py_simple:webhook/events": no changes needed',
    ]
    assert plan.actions == []


def test_changes_and_deletions() -> None:
    cur = _current(
        vars={
            "USER": {"value": "Odie", "secret": False, "description": ""},
            "OLD": {"value": "x", "secret": False, "description": ""},
        },
        triggers={
            "events": {**TRIGGER, "event_type": "get"},
            "gone": {**TRIGGER, "trigger_id": "trg_2"},
        },
    )
    plan = plan_manifest(parse_manifest(SEED), cur)
    assert '[plan] var "py_simple/USER": differs, will set' in plan.lines
    assert (
        '[plan] project "py_simple": env var "OLD" is not in the manifest, will delete'
        in plan.lines
    )
    assert '[plan] trigger "py_simple:webhook/events": not as desired, will update' in plan.lines
    assert (
        '[plan] project "py_simple": trigger "trg_2" is not in the manifest, will delete'
        in plan.lines
    )
    assert [a.type for a in plan.actions] == [
        "set_var",
        "delete_var",
        "update_trigger",
        "delete_trigger",
    ]


def test_skip_existing_secrets() -> None:
    cur = _current(vars={"USER": {"value": "x", "secret": True, "description": ""}})
    plan = plan_manifest(parse_manifest(SEED), cur, skip_existing_secrets=True)
    assert (
        '[plan] var "py_simple/USER": value differs but one of them is secret, skipping'
        in plan.lines
    )
    assert not [a for a in plan.actions if a.type == "set_var"]


def test_source_type_cannot_change() -> None:
    cur = _current(triggers={"events": {**TRIGGER, "source_type": "schedule"}})
    with pytest.raises(InvalidArgument, match="source type cannot be updated"):
        plan_manifest(parse_manifest(SEED), cur)


def test_trigger_keys() -> None:
    text = """\
version: v1
project:
  name: p
  triggers:
    - {name: a, type: webhook}
    - {name: b, schedule: "*/5 * * * *", call: x.py:f}
"""
    lines = plan_manifest(parse_manifest(text), Current()).lines
    assert '[plan] trigger "p:/a": not found, will create' in lines
    assert '[plan] trigger "p:schedule:*/5 * * * */b": not found, will create' in lines
