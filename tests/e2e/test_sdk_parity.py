"""AutoKitteh's SDK names inside real sessions: the submodules, ``autokitteh.connections``,
the error classes, ``Event`` as a dataclass, the values store as a module and a mapping,
and activity outcomes as AutoKitteh gives them (issue 18)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.helpers import Stack, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: sdk
  connections:
    - name: gh
      integration: github
      vars:
        - name: app_id
          value: "42"
"""

CODE = """\
import dataclasses
import os
from datetime import datetime, timedelta, timezone

import autokitteh
from autokitteh import Event, events, outcomes, signals, triggers
from autokitteh.connections import check_connection_name, encode_jwt, refresh_oauth
from autokitteh.errors import (
    AtlassianOAuthError,
    AuthenticationError,
    ConnectionInitError,
    EnvVarError,
    OAuthRefreshError,
)
from autokitteh.events import next_event, subscribe
from autokitteh.outcomes import http_outcome
from autokitteh.signals import Signal
from autokitteh.store import Op, Store
from autokitteh.triggers import get_webhook_url


def names(event):
    print("modules", events.subscribe is subscribe, outcomes.http_outcome is http_outcome,
          signals.Signal is Signal, triggers.get_webhook_url is get_webhook_url)
    print("event", isinstance(event, Event), dataclasses.is_dataclass(event),
          [f.name for f in dataclasses.fields(event)])
    as_dict = dataclasses.asdict(event)
    print("asdict", as_dict["data"]["x"], as_dict["session_id"] == event["session_id"])
    print("items", event["data"]["x"], event.data.x)
    check_connection_name("gh_1")
    try:
        check_connection_name("1gh")
    except ValueError as e:
        print("name:", e)
    print("errors:", ConnectionInitError("gh"), "|", EnvVarError("TOKEN", "missing"), "|",
          OAuthRefreshError("gh", "expired"), "|", AtlassianOAuthError("jira"), "|",
          AuthenticationError("gdrive", "bad key"),
          "|", issubclass(AuthenticationError, autokitteh.AutoKittehError),
          issubclass(ConnectionInitError, autokitteh.AutoKittehError))
    print("key in env", "GITHUB_PRIVATE_KEY" in os.environ)
    print("jwt", encode_jwt({"iat": 1700000000, "exp": 1700000600, "iss": 42}, "gh", "RS256"))
    for call in (lambda: encode_jwt({"iat": 1}, "gh", "HS256"),
                 lambda: encode_jwt({"iat": 1, "exp": 2, "iss": 7}, "gh", "RS256"),
                 lambda: encode_jwt({"iat": 1, "exp": 2, "iss": 42}, "nope", "RS256"),
                 lambda: refresh_oauth("github", "gh")):
        try:
            call()
        except autokitteh.AutoKittehError as e:
            print("refused:", e)


def values(event):
    store = autokitteh.store
    print("store", isinstance(store, Store), store is autokitteh.store)
    sent = {
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        "span": timedelta(seconds=3, microseconds=7),
        "ids": {1, 2},
        "pair": (1, "a"),
        "raw": bytes([0, 1, 255]),
    }
    store["k"] = sent
    back = store["k"]
    print("round trip", back == sent, sorted(type(v).__name__ for v in back.values()))
    print("ops", store.mutate_value("n", Op.ADD, 2), autokitteh.check_and_set_value(
        "n", 2, new_value=7), store["n"], sorted(store))
    del store["k"]
    del store["never-set"]
    print("url", autokitteh.get_store_public_url())


class Unrebuildable(Exception):
    # pickle rebuilds an exception from its args: this one needs two.
    def __init__(self, code, text):
        super().__init__(f"{code}: {text}")
        self.code = code


class Recursive:
    def __init__(self):
        self.n = 1

    def __getattr__(self, name):  # restoring it from pickle recurses
        return getattr(self, name)


@autokitteh.activity
def boom():
    raise Unrebuildable(429, "slow down")


@autokitteh.activity
def make_recursive():
    return Recursive()


def catches(event):
    try:
        boom()
    except Unrebuildable as e:
        print("caught", type(e).__name__, e.code)
    except autokitteh.AutoKittehError as e:
        print("replayed as", e)


def catches_replayed(event):  # its first attempt fails once the activity is journaled
    catches(event)


def uncaught(event):
    boom()


def bad_result(event):
    make_recursive()
    print("not reached")
"""


def _key_pem() -> tuple[str, rsa.RSAPublicKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, key.public_key()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, rsa.RSAPublicKey]]:
    home = tmp_path_factory.mktemp("sdk")
    pem, public = _key_pem()
    faults = "unavailable journaled step=1 entry=sdk.py:catches_replayed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITHUB_PRIVATE_KEY", pem)  # the runner's, as AutoKitteh's server reads it
        s = start_stack(home, {"AK_TEST__FAULTS": faults})
    s.deploy(write_project(home / "sdk", {"autokitteh.yaml": MANIFEST, "sdk.py": CODE}))
    yield s, public
    s.stop()


def _run(stack: Stack, function: str, **inputs: object) -> tuple[dict[str, str], list[str]]:
    flags = [x for k, v in inputs.items() for x in ("-I", f"{k}={json.dumps(v)}")]
    res = stack.ak("session", "start", "-o", "sdk", "-p", f"sdk.py:{function}", "--durable", *flags)
    assert res.returncode == 0, res.stderr
    sid = res.stdout.strip().removeprefix("session_id: ")
    session = stack.wait_session(sid)
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    return session, prints


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_autokittehs_names_import_and_work(env: tuple[Stack, rsa.RSAPublicKey]) -> None:
    stack, public = env
    session, prints = _run(stack, "names", x=5)
    assert session["state"] == "COMPLETED", (session, prints)
    assert prints[:4] == [
        "modules True True True True",
        "event True True ['data', 'event_type', 'event_id', 'session_id']",
        "asdict 5 True",
        "items 5 5",
    ]
    assert prints[4] == "name: Invalid AutoKitteh connection name: '1gh'"
    assert prints[5] == (
        "errors: AutoKitteh connection 'gh' not initialized | Environment variable 'TOKEN' is "
        "missing | OAuth refresh failed for 'gh' connection: expired | API calls not "
        "supported by 'jira', use a token-based connection instead | Authentication failed "
        "for 'gdrive' connection: bad key | False True"
    )
    assert prints[6] == "key in env False"  # the server's key never reaches the handler
    token = prints[7].removeprefix("jwt ")
    header, claims, signature = token.split(".")
    assert json.loads(_b64(header)) == {"alg": "RS256", "typ": "JWT"}
    assert json.loads(_b64(claims)) == {"iat": 1700000000, "exp": 1700000600, "iss": 42}
    public.verify(  # raises if the signature is not the key's
        _b64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert prints[8] == "refused: encode_jwt: unsupported signing method: HS256"
    # Only for the app of a GitHub connection of the session's own project.
    assert prints[9] == "refused: encode_jwt: the claim iss must be the connection's app_id (42)"
    assert prints[10].startswith('refused: encode_jwt: connection "nope" not found')
    assert prints[11].startswith(
        "refused: refresh_oauth: OAuth is not supported by this server yet"
    ), prints


def test_the_values_store_is_a_module_and_a_mapping(env: tuple[Stack, rsa.RSAPublicKey]) -> None:
    stack, _ = env
    session, prints = _run(stack, "values")
    assert session["state"] == "COMPLETED", (session, prints)
    assert prints[0] == "store True True"
    assert prints[1] == "round trip True ['bytes', 'datetime', 'set', 'timedelta', 'tuple']"
    assert prints[2] == "ops 2 True 7 ['k', 'n']"
    project = session["project_id"]
    assert prints[3] == f"url store/{project}"


def test_a_live_activity_raises_the_very_exception(env: tuple[Stack, rsa.RSAPublicKey]) -> None:
    stack, _ = env
    session, prints = _run(stack, "catches")
    assert session["state"] == "COMPLETED", (session, prints)
    assert prints == ["caught Unrebuildable 429"]  # though pickle cannot rebuild it


def test_a_replay_raises_what_the_journal_can_restore(
    env: tuple[Stack, rsa.RSAPublicKey],
) -> None:
    stack, _ = env
    session, prints = _run(stack, "catches_replayed")
    # The first attempt failed right after journaling the activity (AK_TEST__FAULTS), so
    # the handler got the exception from the journal: a stand-in naming the original.
    assert session["state"] == "COMPLETED", (session, prints)
    assert prints == ["replayed as sdk.Unrebuildable: 429: slow down"]


def test_uncaught_unrebuildable_exceptions_keep_their_type(
    env: tuple[Stack, rsa.RSAPublicKey],
) -> None:
    stack, _ = env
    session, _ = _run(stack, "uncaught")
    assert session["state"] == "ERROR"
    assert session["error"] == "error: Unrebuildable('429: slow down')", session


def test_a_result_that_cannot_be_restored_ends_the_session_at_once(
    env: tuple[Stack, rsa.RSAPublicKey],
) -> None:
    stack, _ = env
    session, prints = _run(stack, "bad_result")
    assert session["state"] == "ERROR"
    assert session["error"].startswith(
        "error: activity 'make_recursive' returned a value that pickles but cannot be "
        "restored from pickle (a replay would fail): RecursionError("
    ), session
    assert "@autokitteh.activity" in session["error"]
    assert "not reached" not in prints
