"""The operation table: typed requests parsed once, public exactly where the CLI needs it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from akcore import ops
from akcore import requests as rq
from akcore.errors import InvalidArgument, NotFound
from akcore.typedargs import fields_of, parse

CLI = Path(__file__).parents[2] / "cli" / "ak_cli"


def _cli_calls() -> set[str]:
    """The operations the CLI sources name in ``client.call("op", ...)``."""
    found = set()
    for f in CLI.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, (ast.Attribute, ast.Name))
                and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "call"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(node.args[0].value)
    return found


def test_public_operations_are_exactly_those_the_cli_calls() -> None:
    public = {name for name, op in ops.OPS.items() if op.public}
    assert public == _cli_calls()


@pytest.mark.parametrize(
    "name", ["session.env", "pyenv.prepare", "webhook.lookup", "build.get", "token.add", "x"]
)
def test_internal_and_unknown_operations_are_not_public(name: str) -> None:
    with pytest.raises(NotFound, match=f"unknown operation '{name}'"):
        ops.public(name)


def test_operations_that_change_what_caches_keep_say_so() -> None:
    assert ops.get("var.set").invalidates == {ops.Cache.SESSION_ENV}
    assert ops.Cache.WEBHOOKS in ops.get("deployment.activate").invalidates
    assert not ops.get("var.get").invalidates and not ops.get("session.start").invalidates


def test_a_request_is_parsed_into_its_type() -> None:
    req = ops.get("var.get").parse({"project": "p", "names": ["A"], "reveal": True})
    assert req == rq.VarGet(project="p", names=["A"], reveal=True)
    # Null keeps the default, as the CLI sends for options left out.
    described = {"name": "A", "value": "1", "description": None}
    assert parse("var.set", rq.VarSet, described).description is None
    assert parse("session.list", rq.SessionList, {"page_size": None}).page_size == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"project": "p", "evil": 1}, "var.get: unknown field 'evil'"),
        ({"project": 3}, "var.get: field 'project' must be text, not int"),
        ({"names": "A"}, "field 'names' must be a list of text, not str"),
        ({"names": ["A", 2]}, "field 'names' must be a list of text, not list"),
        ({"reveal": "yes"}, "field 'reveal' must be true or false, not str"),
        (["project"], "var.get: the request must be a map"),
    ],
)
def test_malformed_requests_are_refused_naming_the_field(args: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ops.get("var.get").parse(args)


def test_required_fields_and_nested_types() -> None:
    with pytest.raises(InvalidArgument, match="build.get: missing field 'build_id'"):
        ops.get("build.get").parse({})
    with pytest.raises(InvalidArgument, match="must be a whole number, not bool"):
        ops.get("session.list").parse({"page_size": True})
    with pytest.raises(InvalidArgument, match=f"must be a whole number, not {2**63}"):
        ops.get("session.list").parse({"skip": 2**63})  # past what a database column holds
    files = ops.get("build.create").parse({"project": "p", "files": {"a.py": b"x"}})
    assert files.files == {"a.py": b"x"}
    with pytest.raises(InvalidArgument, match="a map of text to bytes, not dict"):
        ops.get("build.create").parse({"project": "p", "files": {"a.py": "text"}})
    with pytest.raises(InvalidArgument, match="'requirements' must be bytes or null"):
        ops.get("pyenv.prepare").parse({"requirements": "-r /etc/passwd"})


def test_each_declaration_names_fields_its_request_has() -> None:
    for name, op in ops.OPS.items():
        assert not op.scope or op.scope in fields_of(op.request), name
        assert op.reply in (dict, list, str, type(None)), name


def test_a_var_needs_a_name_and_a_value() -> None:
    with pytest.raises(InvalidArgument, match="var.set: missing field 'value'"):
        ops.get("var.set").parse({"project": "p", "name": "A"})
    assert ops.get("var.set").parse({"name": "A", "value": ""}).value == ""


def test_operations_that_only_read_invalidate_no_cache() -> None:
    """``changes_nothing`` goes by the verb: none of those operations may change what a
    cache keeps (a timeout then tells the caller to simply ask again)."""
    reads = [op for op in ops.OPS.values() if ops.changes_nothing(op.name)]
    assert {"session.get", "token.check", "session.list"} <= {op.name for op in reads}
    assert not [op.name for op in reads if op.invalidates]
    assert not ops.changes_nothing("session.stop") and not ops.changes_nothing("var.set")


def test_a_nul_is_refused_in_text_but_not_in_data_of_any_value() -> None:
    """An event's data and a session's inputs are any msgpack value, sealed as bytes
    (docs/security.md: they may hold NUL): a NUL in a key of their top level was refused
    (400) as one in text, while the same in a nested map, or in a value, went."""
    from akcore import requests as rq
    from akcore.errors import InvalidArgument

    for data in ({"a\x00b": 1}, {"k": {"a\x00b": "c\x00d"}}, {"k": "a\x00b"}):
        parse("event.dispatch", rq.EventNew, {"destination": "trg_x", "data": data})
        parse("session.start", rq.SessionStart, {"entrypoint": "a.py:f", "inputs": data})
    with pytest.raises(InvalidArgument, match="field 'memo' holds a NUL"):
        parse("event.dispatch", rq.EventNew, {"destination": "trg_x", "memo": {"a\x00": "b"}})
    with pytest.raises(InvalidArgument, match="field 'event_type' holds a NUL"):
        parse("event.dispatch", rq.EventNew, {"destination": "trg_x", "event_type": "a\x00"})
