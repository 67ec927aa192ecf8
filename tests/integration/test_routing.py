"""How the store routes GitHub and Slack deliveries to connections (``github.route``,
``slack.route``), against a project owner who names another project's key, app or team
in their own connection, and an internet sender who signs with nothing or with garbage."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ak_store.api import StoreApi
from ak_store.db import open_engine
from akcore import ops
from akcore.datakey import Keyring
from akcore.errors import Conflict
from akcore.secrets import Sealer
from cryptography.fernet import Fernet

KEYS = Keyring([Fernet.generate_key()])
BODY = json.dumps({"action": "created", "installation": {"id": 77}}).encode()


def call(api: StoreApi, name: str, args: dict[str, Any]) -> Any:
    return api.routes()[name](ops.get(name).parse(args))


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreApi]:
    monkeypatch.delenv("GITHUB_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("SLACK_SIGNING_SECRET", raising=False)
    engine = open_engine(f"sqlite:///{tmp_path / 'store.sqlite'}")
    yield StoreApi(engine, Sealer(Fernet.generate_key()), KEYS)
    engine.dispose()


def deploy(api: StoreApi, name: str, integration: str, variables: dict[str, Any]) -> str:
    """A project with one connection ``c`` holding ``variables`` (a tuple value: secret)."""
    lines = "\n".join(
        f"        - name: {k}\n          value: '{v[0] if isinstance(v, tuple) else v}'"
        f"\n          secret: {str(isinstance(v, tuple)).lower()}"
        for k, v in variables.items()
    )
    text = (
        f"version: v1\nproject:\n  name: {name}\n  connections:\n    - name: c\n"
        f"      integration: {integration}\n      vars:\n{lines}\n"
    )
    pid = call(api, "manifest.apply", {"text": text})["project_id"]
    bid = call(api, "build.create", {"project": pid, "files": {"h.py": b"def f(e): pass\n"}})
    did = call(api, "deployment.create", {"project": pid, "build_id": bid})
    call(api, "deployment.activate", {"deployment_id": did})
    return str(pid)


def gh_sig(secret: str, body: bytes = BODY) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def slack_sig(secret: str, ts: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256)
    return "v0=" + mac.hexdigest()


@pytest.mark.parametrize(
    "integration,routing",
    [
        ("github", {"pat_key": "k3y"}),
        ("github", {"install_key__123__77": "1"}),
        ("slack", {"install_ids": "A1//T1"}),
    ],
)
def test_a_routing_value_names_one_connection(
    api: StoreApi, integration: str, routing: dict[str, str]
) -> None:
    """A second project cannot claim a routing value: it would get, or block, the first
    project's deliveries."""
    deploy(api, "victim", integration, routing)
    with pytest.raises(Conflict, match="is already used by another connection"):
        deploy(api, "thief", integration, routing)
    ((name, value),) = routing.items()
    thief = deploy(api, "thief2", integration, {"other": "x"})
    with pytest.raises(Conflict, match="is already used by another connection"):
        call(api, "var.set", {"connection": f"{thief_name(api, thief)}/c", "name": name,
                              "value": value})  # fmt: skip


def thief_name(api: StoreApi, pid: str) -> str:
    return str(next(p["name"] for p in call(api, "project.list", {}) if p["project_id"] == pid))


def test_a_routing_variable_cannot_be_secret(api: StoreApi) -> None:
    with pytest.raises(Conflict, match="routes deliveries: it cannot be a secret"):
        deploy(api, "p", "github", {"pat_key": ("k3y",)})


def test_each_github_target_is_proven_by_its_own_secret(api: StoreApi) -> None:
    owner = deploy(api, "owner", "github", {"pat_key": "k3y", "pat_secret": ("s",)})
    got = call(api, "github.route", {"body": BODY, "signature": gh_sig("s"), "key": "k3y"})
    assert got["status"] == 200 and [t["project_id"] for t in got["targets"]] == [owner]
    forged = call(api, "github.route", {"body": BODY, "signature": gh_sig("x"), "key": "k3y"})
    assert (forged["status"], forged["targets"]) == (400, [])
    # A signature that is not hex (nor ASCII) is a bad signature, not a crash.
    for garbage in ("sha256=\u00e9", "sha256=" + "a" * 63 + "\u00ff", "md5=00", "sha256="):
        got = call(api, "github.route", {"body": BODY, "signature": garbage, "key": "k3y"})
        assert got["status"] == 400, garbage


def test_unsigned_deliveries_pass_only_where_a_connection_says_it_has_no_secret(
    api: StoreApi,
) -> None:
    deploy(api, "nosecret", "github", {"pat_key": "open"})  # no pat_secret at all
    got = call(api, "github.route", {"body": BODY, "signature": "", "key": "open"})
    assert got["status"] == 400
    declared = deploy(api, "declared", "github", {"pat_key": "opened", "pat_secret": ""})
    got = call(api, "github.route", {"body": BODY, "signature": "", "key": "opened"})
    assert got["status"] == 200 and [t["project_id"] for t in got["targets"]] == [declared]
    # An app's connection without its secret (and none on the server) refuses everything.
    deploy(api, "app", "github", {"app_id": "123", "install_key__123__77": "1"})
    args = {"body": BODY, "signature": "", "app_id": "123", "installation_id": "77"}
    assert call(api, "github.route", args)["status"] == 403


def test_an_app_delivery_reaches_the_installation_proven_by_the_apps_secret(
    api: StoreApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "server-app-secret")
    pid = deploy(api, "app", "github", {"app_id": "123", "install_key__123__77": "1"})
    args = {"body": BODY, "app_id": "123", "installation_id": "77", "delivery": "d1"}
    got = call(api, "github.route", {**args, "signature": gh_sig("server-app-secret")})
    assert got["status"] == 200 and [t["project_id"] for t in got["targets"]] == [pid]
    assert got["targets"][0]["new"] is True
    again = call(api, "github.route", {**args, "signature": gh_sig("server-app-secret")})
    assert again["targets"][0]["new"] is False  # a redelivery: the same event id
    assert again["targets"][0]["event_id"] == got["targets"][0]["event_id"]
    forged = call(api, "github.route", {**args, "signature": gh_sig("guess")})
    assert forged["status"] == 403


def test_slack_requests_are_proven_by_the_connections_own_secret(api: StoreApi) -> None:
    pid = deploy(
        api, "team", "slack", {"install_ids": "A1//T1", "private_signing_secret": ("sec",)}
    )
    ts, body = str(int(time.time())), b"{}"
    base = {"body": body, "timestamp": ts, "app_id": "A1", "team_id": "T1"}
    got = call(api, "slack.route", {**base, "signature": slack_sig("sec", ts, body)})
    assert got["status"] == 200 and [t["project_id"] for t in got["targets"]] == [pid]
    for bad in (slack_sig("guess", ts, body), "v0=\u00e9", "v1=00", ""):
        assert call(api, "slack.route", {**base, "signature": bad})["status"] == 403, bad
