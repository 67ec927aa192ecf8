"""Connection status per integration: AutoKitteh's rules, and our warnings where a
connection would silently refuse or accept every delivery."""

from __future__ import annotations

import pytest
from akcore.connstatus import ERROR, INIT_REQUIRED, OK, WARNING, status

PAT = {"auth_type": "pat", "pat": "ghp_x", "pat_key": "k", "pat_secret": "s"}
APP = {"app_id": "5", "install_id": "7", "install_key__5__7": "1"}
# an installation whose routing var is missing (another installation's is there)
OTHER_INSTALL = {"auth_type": "oauthPrivate", "app_id": "5", "install_id": "7",
                 "client_secret": "s", "install_key__5__8": "1"}  # fmt: skip
SLACK = {"auth_type": "oauthPrivate", "oauth_access_token": "xoxb", "install_ids": "A//T"}


@pytest.mark.parametrize(
    "variables,server_secret,code,message",
    [
        ({}, False, INIT_REQUIRED, "Init required"),
        (PAT, False, OK, "Using PAT + webhook"),
        ({**PAT, "pat": ""}, False, INIT_REQUIRED, "Init required"),
        ({k: v for k, v in PAT.items() if k != "pat_secret"}, False, WARNING, "every delivery"),
        ({**PAT, "pat_secret": ""}, False, WARNING, "anyone who knows the webhook URL"),
        ({"auth_type": "oauthDefault"}, True, INIT_REQUIRED, "Init required"),
        ({**APP, "auth_type": "oauthDefault"}, True, OK, "Using GitHub app"),
        ({**APP, "auth_type": "oauthPrivate"}, False, WARNING, "every delivery"),
        (OTHER_INSTALL, False, WARNING, "no install_key__5__7 var"),
        ({"auth_type": "weird"}, False, ERROR, "Bad auth type"),
    ],
)
def test_github(variables: dict[str, str], server_secret: bool, code: str, message: str) -> None:
    got = status("github", variables, server_secret)
    assert got.code == code and message in got.message, got


@pytest.mark.parametrize(
    "variables,server_secret,code,message",
    [
        ({}, False, INIT_REQUIRED, "Init required"),
        (SLACK, True, OK, "Using OAuth 2.0"),
        ({**SLACK, "private_signing_secret": "s"}, False, OK, "Using OAuth 2.0"),
        (SLACK, False, WARNING, "every request is refused"),
        ({**SLACK, "install_ids": ""}, True, WARNING, "no event can reach it"),
        ({**SLACK, "oauth_access_token": ""}, True, INIT_REQUIRED, "Init required"),
        ({"auth_type": "socketMode"}, True, WARNING, "does not support"),
        ({"auth_type": "weird"}, True, ERROR, "Bad auth type"),
    ],
)
def test_slack(variables: dict[str, str], server_secret: bool, code: str, message: str) -> None:
    got = status("slack", variables, server_secret)
    assert got.code == code and message in got.message, got


def test_http_is_ok() -> None:
    assert status("http", {"bearer_token": "x"}).code == OK
