"""Manifest validation: every bad field is named; nothing half-valid gets through."""

from __future__ import annotations

import pytest
import yaml
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
        "- project.name: invalid name 'bad-name': use ASCII letters, digits and _, not "
        "starting with a digit",
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


def _bomb(levels: int, field: str) -> str:
    """A manifest of a few hundred bytes whose ``field`` is 10**levels strings once its
    nested aliases are expanded (scratch-review3/bomb.py)."""
    lines = ["version: v1", "x0: &a0 [" + ",".join(["lollollol"] * 10) + "]"]
    for i in range(1, levels):
        lines.append(f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    lines += ["project:", "  name: bomb", "  triggers:", "    - name: t", "      webhook: {}"]
    return "\n".join([*lines, f"      {field}: *a{levels - 1}", ""])


@pytest.mark.parametrize("field", ["is_sync", "call", "name"])
def test_an_alias_bomb_is_refused_before_anything_expands_it(field: str) -> None:
    text = _bomb(6, field)  # a million strings expanded (the review's 7 made 132 MB)
    assert len(text) < 500
    with pytest.raises(InvalidArgument) as e:
        parse_manifest(text)
    assert e.value.message.startswith("yaml: found the alias *a0: a manifest cannot use YAML ")
    assert "write the value out in full" in e.value.message and len(e.value.message) < 400


def test_an_anchor_without_an_alias_is_plain_yaml() -> None:
    m = parse_manifest("version: v1\nproject:\n  name: &n p\n")
    assert m.project is not None and m.project.name == "p"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("[1, [2, [3]]]", "got a list"),
        ("{a: 1}", "got a mapping"),
        ("'" + "y" * 100_000 + "'", "got '" + "y" * 80 + "'... (100,000 characters)"),
        ("1" * 5000, "a number is too long: quote it to make it text"),
    ],
)
def test_a_wrong_value_is_shown_by_its_kind_or_cut(value: str, shown: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_manifest(
            f"version: v1\nproject:\n  name: p\n  triggers:\n  - name: t\n"
            f"    webhook: {{}}\n    is_sync: {value}\n"
        )
    assert shown in e.value.message and len(e.value.message) < 400, e.value.message


def test_a_version_that_is_not_text_is_named_by_its_kind() -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_manifest("version: [" + ",".join(["v1"] * 10_000) + "]\n")
    assert e.value.message == "unsupported manifest version a list: use v1 or v2"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ('"evil\\n"', "invalid name 'evil\\n': use ASCII letters, digits and _"),
        ('"\\u0440rj"', "invalid name 'рrj': use ASCII letters, digits and _"),  # Cyrillic р
        ("1st", "invalid name '1st': use ASCII letters, digits and _, not starting"),
        ("a" * 129, "... (129 characters): a name is at most 128 characters"),
        ("prj_01jv3wxp0dem39cv3v2xvr29wt", "it has the shape of an id (prj_..., trg_..."),
        ("trg_zzzzzzzzzzzzzzzzzzzzzzzzzz", "it has the shape of an id"),
    ],
)
@pytest.mark.parametrize("where", ["project", "var", "connection", "trigger"])
def test_names_follow_one_rule(name: str, problem: str, where: str) -> None:
    project, var, conn, trigger = "p", "V", "c", "t"
    if where == "project":
        project = name
    elif where == "var":
        var = name
    elif where == "connection":
        conn = name
    else:
        trigger = name
    text = (
        f"version: v1\nproject:\n  name: {project}\n"
        f"  vars:\n  - name: {var}\n    value: x\n"
        f"  connections:\n  - name: {conn}\n    integration: http\n"
        f"  triggers:\n  - name: {trigger}\n    webhook: {{}}\n"
    )
    field = {"project": "project", "var": "project.vars[0]"}.get(where, "")
    field = field or f"project.{where}s[0]"
    msg = _problems(text)
    assert f"- {field}.name: " in msg and problem in msg, msg


def test_the_longest_name_and_names_near_ids_pass() -> None:
    for name in (
        "a" * 128,
        "prj_short",
        "prj_01jv3wxp0dem39cv3v2xvr29wtx",
        "PRJ_01JV3WXP0DEM39CV3V2XVR29WT",
    ):
        m = parse_manifest(f"version: v1\nproject:\n  name: {name}\n")
        assert m.project is not None and m.project.name == name


@pytest.mark.parametrize("field", ["call", "type", "schedule", "connection", "version"])
def test_a_long_bad_text_is_quoted_cut(field: str) -> None:
    long = "z" * 1_000_000
    if field == "version":
        text = f"version: {long}\n"
    else:
        text = f"version: v1\nproject:\n  name: p\n  triggers:\n  - name: t\n    {field}: {long}\n"
    with pytest.raises(InvalidArgument) as e:
        parse_manifest(text)
    # (text over MAX_TEXT is refused by its length, quoting none of it)
    assert "1,000,000 characters" in e.value.message and len(e.value.message) < 600


@pytest.fixture(params=["libyaml", "python"])
def yaml_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Manifests are parsed by libyaml where PyYAML has it, else by PyYAML's own parser."""
    if request.param == "python":
        monkeypatch.delattr(yaml, "CSafeLoader")
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml")


@pytest.mark.usefixtures("yaml_parser")
def test_either_parser_refuses_aliases_and_reads_the_same_manifest() -> None:
    with pytest.raises(InvalidArgument, match="yaml: found the alias \\*a0: a manifest cannot"):
        parse_manifest(_bomb(6, "call"))
    m = parse_manifest(
        "version: v1\nproject:\n  name: &n p\n  triggers:\n    - name: t\n"
        "      webhook: {}\n      call: h.py:f\n      is_sync: yes\n"
    )
    assert m.project is not None and m.project.name == "p"
    assert m.project.triggers[0].call == "h.py:f"


@pytest.mark.usefixtures("yaml_parser")
@pytest.mark.parametrize("kind", ["flow", "block"])
def test_a_manifest_nested_too_deeply_is_refused_plainly(kind: str) -> None:
    """(It raised RecursionError, which the store logged as a crash of the request.)"""
    n = 5000
    if kind == "flow":
        text = "version: v1\nx: " + "[" * n + "]" * n + "\n"
    else:
        text = "version: v1\nx:\n" + "".join(" " * i + "- \n" for i in range(n))
    with pytest.raises(InvalidArgument, match="yaml: the manifest's collections are nested too"):
        parse_manifest(text)


def test_a_projects_other_text_and_connections_are_bounded() -> None:
    """A trigger's event type, call and schedule and a project's display name are in every
    list of their kind: at most MAX_TEXT characters; a project at most MAX_CONNECTIONS
    connections (as MAX_TRIGGERS triggers)."""
    from akcore.manifest import MAX_CONNECTIONS, MAX_TEXT

    head = "version: v1\nproject:\n  name: p\n"
    ok = parse_manifest(head + f"  display_name: {'d' * MAX_TEXT}\n")
    assert ok.project is not None and len(ok.project.display_name) == MAX_TEXT
    with pytest.raises(InvalidArgument, match="display_name: 1,025 characters, over the limit"):
        parse_manifest(head + f"  display_name: {'d' * (MAX_TEXT + 1)}\n")
    trigger = "  triggers:\n  - name: t\n    webhook: {}\n    call: a.py:f\n"
    with pytest.raises(InvalidArgument, match="event_type: 1,025 characters"):
        parse_manifest(head + trigger + f"    event_type: {'e' * (MAX_TEXT + 1)}\n")
    conns = "".join(f"  - name: c{i}\n    integration: http\n" for i in range(MAX_CONNECTIONS + 1))
    with pytest.raises(InvalidArgument, match="501 connections, over the limit of 500"):
        parse_manifest(head + "  connections:\n" + conns)
