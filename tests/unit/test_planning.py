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


CONNS = """\
version: v1
project:
  name: p
  connections:
    - name: api
      integration: http
      vars:
        - name: base_url
          value: https://a.example
        - name: bearer_token
          value: ""
          secret: true
    - name: fresh
      integration: http
"""


def _conn(integration: str = "http", **vars_: dict[str, object]) -> dict[str, object]:
    return {"connection_id": "con_1", "integration": integration, "vars": vars_}


def test_connections_created_kept_updated_and_deleted() -> None:
    base = {"value": "https://a.example", "secret": False, "description": ""}
    token = {"value": "tok", "secret": True, "description": ""}
    cur = Current(
        project_id="prj_1",
        connections={
            "api": _conn(base_url=base, bearer_token=token),
            "gone": {"connection_id": "con_2", "integration": "http", "vars": {}},
        },
    )
    plan = plan_manifest(parse_manifest(CONNS), cur)
    assert plan.lines[2:] == [
        '[plan] project "p": found 2 connections',
        '[plan] connection "p/api": no changes needed',
        '[plan] var "p/api/base_url": no change needed',
        '[plan] var "p/api/bearer_token": changed, will update',
        '[plan] connection "p/fresh": not found, will create',
        '[plan] project "p": connection "gone" is not in the manifest, will delete',
        '[plan] project "p": found 0 triggers',
    ]
    assert [(a.type, a.key) for a in plan.actions] == [
        ("set_var", "p/api/bearer_token"),
        ("create_connection", "p/fresh"),
        ("delete_connection", "p/gone"),
    ]
    assert plan.actions[0].args["connection"] == "api"

    skipping = plan_manifest(parse_manifest(CONNS), cur, skip_existing_secrets=True)
    assert (
        '[plan] var "p/api/bearer_token": value differs but one of them is secret, skipping'
        in skipping.lines
    )
    changed = plan_manifest(
        parse_manifest(
            CONNS.replace("integration: http\n      vars", "integration: x\n      vars")
        ),
        cur,
    )
    assert '[plan] connection "p/api": not as desired, will update' in changed.lines


def test_connection_manifest_errors() -> None:
    dup = CONNS.replace("name: fresh", "name: api")
    with pytest.raises(InvalidArgument, match=r"connections\[1\].name: duplicate connection"):
        parse_manifest(dup)
    trig = CONNS + "  triggers:\n    - name: t\n      connection: nope\n"
    with pytest.raises(InvalidArgument, match=r"triggers\[0\].connection: 'nope' is not one"):
        parse_manifest(trig)
