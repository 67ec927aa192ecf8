"""`ak up`'s token policy and bootstrap, and the CLI's credentials file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from ak_cli import access, credentials, up
from akcore import tokens
from akcore.errors import AKError


@pytest.fixture(autouse=True)
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("AK_TOKEN", raising=False)


@pytest.mark.parametrize(
    ("mode", "host", "asked", "on"),
    [
        ("dev", "127.0.0.1", "", False),
        ("dev", "::1", "", False),
        ("dev", "localhost", "", False),
        ("dev", "127.0.0.1", "on", True),
        ("dev", "0.0.0.0", "", True),
        ("dev", "10.1.2.3", "", True),
        ("default", "127.0.0.1", "", True),
    ],
)
def test_tokens_are_off_only_in_dev_mode_on_loopback(
    mode: str, host: str, asked: str, on: bool
) -> None:
    assert access.tokens_on(mode, host, {"AK_AUTH__TOKENS": asked}) is on


@pytest.mark.parametrize(("mode", "host"), [("dev", "0.0.0.0"), ("default", "127.0.0.1")])
def test_tokens_off_elsewhere_is_refused(mode: str, host: str) -> None:
    with pytest.raises(AKError, match="may be off only with --mode dev on a loopback address"):
        access.tokens_on(mode, host, {"AK_AUTH__TOKENS": "off"})


def test_bootstrap_stores_a_token_for_the_cli_and_gives_the_store_its_digest(
    tmp_path: Path,
) -> None:
    env: dict[str, str] = {}
    note, given = access.bootstrap(env, tmp_path / "data", "http://127.0.0.1:9999")
    token = credentials.load()["127.0.0.1:9999"]
    assert token.startswith("akt_") and "new" in note and given == token
    digest_file = Path(env["AK_AUTH__BOOTSTRAP_TOKEN_FILE"])
    assert digest_file.read_text() == f"sha256:{tokens.digest(token)}\n"
    assert token not in digest_file.read_text()
    assert stat.S_IMODE(digest_file.stat().st_mode) == 0o600
    # The next start keeps the same token.
    access.bootstrap(env, tmp_path / "data", "http://127.0.0.1:9999")
    assert credentials.load() == {"127.0.0.1:9999": token}
    assert tokens.bootstrap_digest(digest_file.read_text()) == tokens.digest(token)


@pytest.mark.parametrize(
    ("env", "addr", "url"),
    [
        ({}, "127.0.0.1:9980", "http://localhost:9980"),  # what `ak` calls by default
        ({}, "0.0.0.0:9980", "http://localhost:9980"),
        ({}, "0.0.0.0:9973", "http://127.0.0.1:9973"),  # the default does not reach it
        ({}, "192.0.2.7:9980", "http://192.0.2.7:9980"),
        (
            {"AK_HTTP__SERVICE_URL": "http://ak.internal:80"},
            "0.0.0.0:9973",
            "http://ak.internal:80",
        ),
    ],
)
def test_ak_up_keeps_the_cli_token_under_the_url_the_cli_calls(
    env: dict[str, str], addr: str, url: str
) -> None:
    host, port = addr.rsplit(":", 1)
    served = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    assert up._cli_url(env, served, host, int(port)) == url


@pytest.mark.parametrize(
    ("env", "addr", "hint"),
    [
        ({}, "127.0.0.1:9980", ""),
        ({}, "localhost:9980", ""),  # (the default URL is this one)
        ({}, "0.0.0.0:9973", " (for ak: AK_HTTP__SERVICE_URL=http://127.0.0.1:9973)"),
        ({"AK_HTTP__SERVICE_URL": "http://127.0.0.1:9973"}, "127.0.0.1:9973", ""),
    ],
)
def test_ak_up_says_how_to_reach_it_only_when_a_cli_would_not_by_default(
    env: dict[str, str], addr: str, hint: str
) -> None:
    host, port = addr.rsplit(":", 1)
    served = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    assert up._cli_hint(env, up._cli_url(env, served, host, int(port))) == hint


def test_credentials_file_and_ak_token(monkeypatch: pytest.MonkeyPatch) -> None:
    credentials.save("h:1", "t1")
    credentials.save("default", "t0")
    assert stat.S_IMODE(credentials.path().stat().st_mode) == 0o600
    assert credentials.token_for("http://h:1") == "t1"
    assert credentials.token_for("http://other:2") == "t0"
    monkeypatch.setenv("AK_TOKEN", "from-env")
    assert credentials.token_for("http://h:1") == "from-env"
    credentials.save("h:1", "")
    credentials.save("default", "")
    assert credentials.path().read_text() == ""


def test_a_bootstrap_file_must_hold_a_long_token_or_a_digest() -> None:
    with pytest.raises(ValueError, match="at least 32 characters"):
        tokens.bootstrap_digest("short")
    assert tokens.bootstrap_digest(" " + "x" * 40 + "\n") == tokens.digest("x" * 40)


def test_a_short_token_is_not_taken_as_the_first_one(tmp_path: Path) -> None:
    with pytest.raises(AKError, match="the token of AK_TOKEN cannot be the first API token"):
        access.bootstrap({"AK_TOKEN": "secret"}, tmp_path, "http://localhost:9980")


@pytest.mark.parametrize(
    "entries",
    [
        {"127.0.0.1:9980": tokens.new_token(), "default": tokens.new_token()},
        {"localhost:9980": tokens.new_token(), "ak.example.com:443": tokens.new_token()},
        {"[::1]:9980": tokens.new_token(), "example.com": tokens.new_token()},
        {"10:20": tokens.new_token()},  # YAML 1.1 would read 10:20 unquoted as 620
        {"127.0.0.1:9980": "hand-made"},
    ],
)
def test_credentials_read_back_as_yaml_reads_them(entries: dict[str, str]) -> None:
    """The file is read without yaml when it is as `save` writes tokens, with it
    otherwise: the same entries either way."""
    for key, token in entries.items():
        credentials.save(key, token)
    assert credentials.load() == entries
    assert credentials.load() == {
        str(k): str(v) for k, v in yaml.safe_load(credentials.path().read_text()).items()
    }


def test_a_hand_edited_credentials_file_is_read_as_yaml() -> None:
    token = tokens.new_token()
    credentials.path().parent.mkdir(parents=True)
    credentials.path().write_text(f"# mine\n'localhost:9980': {token}\nother:1: true\n")
    assert credentials.load() == {"localhost:9980": token, "other:1": "True"}
