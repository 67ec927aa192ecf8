"""Manifest validation: every bad field is named; nothing half-valid gets through."""

from __future__ import annotations

import pytest
from akcore.errors import InvalidArgument
from akcore.manifest import parse_manifest

SEED = """\
---
version: v1

project:
  name: py_simple
  triggers:
    - name: events
      event_type: post
      call: simple.py:greet
      webhook: {}
  vars:
    - name: USER
      value: Garfield
"""


def test_seed_manifest() -> None:
    m = parse_manifest(SEED)
    assert m.version == "v1"
    assert m.project is not None and m.project.name == "py_simple"
    (t,) = m.project.triggers
    assert (t.name, t.source_type, t.event_type, t.call) == (
        "events",
        "webhook",
        "post",
        "simple.py:greet",
    )
    assert t.is_durable is True and t.has_webhook_field
    (v,) = m.project.vars
    assert (v.name, v.value, v.secret) == ("USER", "Garfield", False)


def test_project_name_override_and_v2_default_durability() -> None:
    m = parse_manifest(SEED.replace("v1", "v2"), project_name="other")
    assert m.project is not None and m.project.name == "other"
    assert m.project.triggers[0].is_durable is False


def test_version_only_is_a_no_op() -> None:
    assert parse_manifest("version: v1\n").project is None


@pytest.mark.parametrize("version", ["v3", "1", None])
def test_unsupported_version(version: str | None) -> None:
    text = f"version: {version}\n" if version else "project:\n  name: x\n"
    with pytest.raises(InvalidArgument, match="unsupported manifest version"):
        parse_manifest(text)


def _problems(text: str) -> str:
    with pytest.raises(InvalidArgument) as e:
        parse_manifest(text)
    assert e.value.message.startswith("invalid YAML semantics:\n")
    return e.value.message


def test_every_bad_field_is_named() -> None:
    msg = _problems(
        """\
version: v1
project:
  name: bad-name
  colour: red
  vars:
    - name: A
    - name: B
      value: 5
    - name: B
      value: "x"
  triggers:
    - name: t1
      webhook: {}
      schedule: "* * * * *"
    - name: t2
      call: nope
      webhook: {}
      is_durable: "yes"
    - name: t3
      type: carrier_pigeon
    - name: t4
      webhook: {}
      filter: "data.("
    - name: t5
      schedule: "@every 1m"
      is_sync: true
"""
    )
    for expected in [
        "- project.name: 'bad-name' must contain only letters, digits and _",
        "- project.colour: unknown field",
        "- project.vars[0].value: missing required field",
        "- project.vars[1].value: expected a string, got int",
        "- project.vars[2].name: duplicate var 'B'",
        "- project.triggers[0]: only one of webhook, schedule, connection may be given",
        "- project.triggers[1].call: 'nope' is not of the form file.py:function",
        "- project.triggers[1].is_durable: expected true or false, got 'yes'",
        "- project.triggers[2].type: 'carrier_pigeon' is not one of webhook, schedule, connection",
        "- project.triggers[3].filter: invalid filter",
        "- project.triggers[4].is_sync: only webhook triggers can be sync",
    ]:
        assert expected in msg, msg


def test_a_filter_too_big_is_named_with_its_limit() -> None:
    wide = "size([" + ",".join(["0"] * 300) + "]) > 0"
    msg = _problems(
        "version: v1\nproject:\n  name: p\n  triggers:\n"
        f"    - name: t\n      webhook: {{}}\n      filter: '{wide}'\n"
        f"    - name: u\n      webhook: {{}}\n      filter: '{'x' * 5000}'\n"
    )
    assert (
        "- project.triggers[0].filter: invalid filter: it has 606 tokens (names, literals, "
        "operators and brackets), over the limit of 500" in msg
    )
    assert "- project.triggers[1].filter: invalid filter: it is 5000 characters long" in msg


def test_trigger_without_type() -> None:
    msg = _problems("version: v1\nproject:\n  name: p\n  triggers:\n    - name: t\n")
    assert "project.triggers[0]: missing trigger type" in msg


def test_yaml_syntax_error() -> None:
    with pytest.raises(InvalidArgument, match="^yaml: "):
        parse_manifest("version: v1\nproject: [\n")
