"""akcore.scope: every field of every public request is a reference or said not to be one,
so a field added later cannot carry a limited token past its projects unchecked."""

from __future__ import annotations

import pytest
from akcore import ops, scope
from akcore import requests as rq

PUBLIC = sorted((name, op.request) for name, op in ops.OPS.items() if op.public)


@pytest.mark.parametrize(("name", "request_type"), PUBLIC, ids=[n for n, _ in PUBLIC])
def test_every_field_of_a_public_request_is_classified(name: str, request_type: type) -> None:
    assert scope.unclassified(request_type) == []


def test_an_unclassified_field_is_named() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Later:
        project: str = ""
        other_project: str = ""

    assert scope.unclassified(Later) == ["other_project"]


def test_each_operation_names_a_field_that_is_a_reference() -> None:
    """The field ``akcore.ops`` names as an operation's scope is checked as a reference
    (or the operation is checked as a whole: manifests, project.create)."""
    whole = {"manifest.plan", "manifest.apply", "project.create"}
    for name, op in ops.OPS.items():
        if op.public and op.scope and name not in whole:
            assert op.scope in scope.FIELDS, name


def test_refs_takes_each_value_with_the_request_s_project() -> None:
    req = rq.SessionList(project="alpha", trigger="hook", event_ids=["evt_a", "evt_b"])
    assert scope.refs(req) == [
        (scope.PROJECT, "alpha", "alpha"),
        (scope.EVENT, "evt_a", "alpha"),
        (scope.EVENT, "evt_b", "alpha"),
        (scope.TRIGGER, "hook", "alpha"),
    ]
    assert scope.refs(rq.VarGet(env="beta/default", connection="beta/gh")) == [
        (scope.ENV, "beta/default", ""),
        (scope.CONNECTION, "beta/gh", ""),
    ]
    # A new trigger's spec is not a reference; its project is.
    spec = rq.TriggerCreate(project="alpha", trigger={"name": "t", "connection": "gh"})
    assert scope.refs(spec) == [(scope.PROJECT, "alpha", "alpha")]
