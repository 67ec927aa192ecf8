"""What a connection puts into a worker's environment."""

from __future__ import annotations

import pytest
from akcore.integrations import connection_env, integration_id


def test_vars_are_prefixed_and_bearer_token_gives_auth() -> None:
    env = connection_env("http_trigger", "con_1", {"bearer_token": "s3cr3t", "url": "u"})
    assert env == {
        "http_trigger__bearer_token": "s3cr3t",
        "http_trigger__url": "u",
        "http_trigger__connection_id": "con_1",
        "http_trigger__auth": "Bearer s3cr3t",
    }


def test_basic_auth_and_an_explicit_auth_var() -> None:
    basic = connection_env("c", "con_1", {"basic_username": "u", "basic_password": "p"})
    assert basic["c__auth"] == "Basic dTpw"
    given = connection_env("c", "con_1", {"auth": "Token x", "bearer_token": "y"})
    assert given["c__auth"] == "Token x"
    assert "c__auth" not in connection_env("c", "con_1", {})


@pytest.mark.parametrize(
    ("name", "want"),
    [  # AutoKitteh's own vectors (sdk/sdktypes/integration_id_test.go)
        ("test", "int_3kth00testaf9d33c5697341f0"),
        ("testing", "int_3kthtest1n7bf767860ab68268"),
        ("iou", "int_3kth00010v08d1729ff0ad290d"),
        ("foo-bar", "int_3kthf000ba732f13282aa60744"),
    ],
)
def test_integration_ids_are_autokittehs(name: str, want: str) -> None:
    assert integration_id(name) == want
