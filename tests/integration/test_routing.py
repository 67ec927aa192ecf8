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
from akcore.datakey import Keyring
from akcore.errors import Conflict
from akcore.secrets import Sealer
from cryptography.fernet import Fernet

from .helpers import call

KEYS = Keyring([Fernet.generate_key()])
BODY = json.dumps({"action": "created", "installation": {"id": 77}}).encode()


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


@pytest.mark.parametrize(
    "integration,routing",
    [
        ("github", {"pat_key": "k3y"}),
        ("github", {"install_key__123__77": "1"}),
        ("slack", {"install_ids": "A1//T1"}),
    ],
)
def test_a_project_var_named_like_a_routing_var_hides_no_claim(
    api: StoreApi, integration: str, routing: dict[str, str]
) -> None:
    """Only connections' vars route: a project's var of the same name and value (or a
    deleted connection's) must not hide the connection that holds the value."""
    ((name, value),) = routing.items()
    call(api, "project.create", {"name": "bystander"})
    call(api, "var.set", {"project": "bystander", "name": name, "value": value})
    deploy(api, "victim", integration, routing)
    with pytest.raises(Conflict, match="is already used by another connection"):
        deploy(api, "thief", integration, routing)
    # and the project var itself claims nothing: its project's connection may take it
    call(api, "var.delete", {"connection": "victim/c", "name": name})
    deploy(api, "heir", integration, routing)


def test_init_sets_every_var_or_none(api: StoreApi) -> None:
    deploy(api, "keep", "github", {"pat_key": "keepkey", "pat_secret": ("old",)})
    deploy(api, "other", "github", {"pat_key": "takenkey"})
    init = {"connection": "keep/c", "secrets": {"pat": "ghp_x", "pat_secret": "new"}}
    with pytest.raises(Conflict, match="is already used by another connection"):
        call(api, "connection.init", {**init, "values": {"pat_key": "takenkey"}})
    with pytest.raises(Conflict, match="is already used by another connection"):
        call(api, "connection.init", {**init, "values": {"pat_key": "takenkey"},
                                      "delete": ["pat_secret"]})  # fmt: skip
    got = call(api, "var.get", {"connection": "keep/c", "reveal": True})
    assert {v["name"]: v["value"] for v in got} == {"pat_key": "keepkey", "pat_secret": "old"}
    call(api, "connection.init", {**init, "values": {"pat_key": "keepkey", "auth_type": "pat"}})
    got = call(api, "var.get", {"connection": "keep/c", "reveal": True, "names": ["pat_secret"]})
    assert got[0]["value"] == "new" and got[0]["secret"] is True
    call(api, "connection.init", {"connection": "keep/c", "delete": ["auth_type", "nope"]})
    got = call(api, "var.get", {"connection": "keep/c"})
    assert [v["name"] for v in got] == ["pat", "pat_key", "pat_secret"]


def test_a_signed_delivery_sent_again_under_a_new_id_is_the_same_delivery(
    api: StoreApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery id is not signed: a replay of a signed body under new ids (GitHub's
    scheme has no timestamp) finds the first delivery's event, as a redelivery does."""
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "server-app-secret")
    deploy(api, "own", "github", {"pat_key": "k3y", "pat_secret": ("s",)})
    deploy(api, "app", "github", {"app_id": "123", "install_key__123__77": "1"})
    edited = json.dumps({"action": "edited", "installation": {"id": 77}}).encode()
    for secret, args in (
        ("s", {"key": "k3y"}),
        ("server-app-secret", {"app_id": "123", "installation_id": "77"}),
    ):
        signed = {**args, "body": BODY, "signature": gh_sig(secret)}
        first = call(api, "github.route", {**signed, "delivery": "d-1"})
        assert first["targets"][0]["new"] is True
        for replay in ("d-2", "d-3", ""):
            again = call(api, "github.route", {**signed, "delivery": replay})
            (target,) = again["targets"]
            assert target["new"] is False, replay
            assert target["event_id"] == first["targets"][0]["event_id"]
        other = {**args, "body": edited, "signature": gh_sig(secret, edited), "delivery": "d-9"}
        assert call(api, "github.route", other)["targets"][0]["new"] is True


def test_a_slack_command_replayed_within_its_window_is_the_same_request(api: StoreApi) -> None:
    deploy(api, "team", "slack", {"install_ids": "A1//T1", "private_signing_secret": ("sec",)})
    ts, body = str(int(time.time())), b"command=%2Fdeploy&team_id=T1&api_app_id=A1"
    args = {"body": body, "timestamp": ts, "app_id": "A1", "team_id": "T1"}
    first = call(api, "slack.route", {**args, "signature": slack_sig("sec", ts, body)})
    again = call(api, "slack.route", {**args, "signature": slack_sig("sec", ts, body)})
    assert (first["targets"][0]["new"], again["targets"][0]["new"]) == (True, False)
    assert again["targets"][0]["event_id"] == first["targets"][0]["event_id"]
    # The same command typed again is signed at another time (and has its own trigger_id).
    later = str(int(ts) + 1)
    other = call(api, "slack.route", {**args, "timestamp": later,
                                      "signature": slack_sig("sec", later, body)})  # fmt: skip
    assert other["targets"][0]["new"] is True


def test_a_repository_webhook_sent_to_the_app_route_is_for_no_one(api: StoreApi) -> None:
    deploy(api, "app", "github", {"app_id": "123", "install_key__123__77": "1"})
    args = {"body": BODY, "app_id": "99", "signature": gh_sig("whatever")}
    assert call(api, "github.route", args) == {"status": 200, "targets": []}


def test_two_claims_of_one_routing_value_at_the_same_moment_do_not_both_win(
    api: StoreApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both requests looked before either wrote (on PostgreSQL both pass the check): the
    database's unique claim refuses the second, and nothing of it is kept."""
    deploy(api, "victim", "github", {"pat_key": "k3y"})
    thief = deploy(api, "thief", "github", {"other": "x"})
    monkeypatch.setattr("ak_store.routes.check_unclaimed", lambda *a: None)  # the race window
    with pytest.raises(Conflict, match="at the same moment: nothing was changed"):
        call(api, "var.set", {"connection": f"{thief_name(api, thief)}/c", "name": "pat_key",
                              "value": "k3y"})  # fmt: skip
    with pytest.raises(Conflict, match="at the same moment"):
        call(api, "connection.init", {"connection": f"{thief_name(api, thief)}/c",
                                      "values": {"pat_key": "k3y", "other": "y"}})  # fmt: skip
    got = call(api, "var.get", {"connection": f"{thief_name(api, thief)}/c"})
    assert [(v["name"], v["value"]) for v in got] == [("other", "x")]
    # Freed when its var goes: the claim can be made again.
    victim = next(p["project_id"] for p in call(api, "project.list", {}) if p["name"] == "victim")
    call(api, "var.delete", {"connection": f"{thief_name(api, victim)}/c", "name": "pat_key"})
    call(api, "var.set", {"connection": f"{thief_name(api, thief)}/c", "name": "pat_key",
                          "value": "k3y"})  # fmt: skip
