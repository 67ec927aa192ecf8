"""The Jira and Google helpers' choices from a connection's variables, without a network:
which credentials a client gets, and which of a Google client's calls are activities."""

from __future__ import annotations

import json
from typing import Any

import pytest
from autokitteh import atlassian, google
from autokitteh._gate import Decision, decide
from autokitteh.errors import ConnectionInitError, EnvVarError, OAuthRefreshError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@pytest.fixture(scope="module")
def service_account_json() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "private_key": pem,
            "client_email": "bot@p.iam.gserviceaccount.com",
            "token_uri": "http://127.0.0.1:9/token",
        }
    )


def test_jira_server_token_without_email_is_a_bearer_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("j__BaseURL", "https://jira.example.com")
    monkeypatch.setenv("j__Token", "pat-1")
    client = atlassian.jira_client("j")
    assert client.url == "https://jira.example.com"
    assert client._session.headers["Authorization"] == "Bearer pat-1"
    assert client._session.auth is None


def test_jira_kwargs_win_over_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("j__BaseURL", "https://site.atlassian.net")
    monkeypatch.setenv("j__Token", "api-token")
    monkeypatch.setenv("j__Email", "me@example.com")
    client = atlassian.confluence_client("j", url="http://127.0.0.1:9", timeout=5)
    assert (client.url, client.timeout) == ("http://127.0.0.1:9", 5)
    assert client._session.auth == ("me@example.com", "api-token")


def test_jira_needs_a_site(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("j__Token", "api-token")
    with pytest.raises(ConnectionInitError):
        atlassian.jira_client("j")
    assert atlassian.get_base_url("j") is None
    monkeypatch.setenv("j__AccessURL", "https://site.atlassian.net")
    assert atlassian.get_base_url("j") == "https://site.atlassian.net"


def test_service_account_kwargs_reach_the_credentials(
    monkeypatch: pytest.MonkeyPatch, service_account_json: str
) -> None:
    monkeypatch.setenv("g__JSON", service_account_json)
    creds = google.google_creds("gmail", "g", google.GMAIL_SCOPES, subject="me@example.com")
    assert creds.service_account_email == "bot@p.iam.gserviceaccount.com"
    assert creds._subject == "me@example.com"
    assert list(creds.scopes) == google.GMAIL_SCOPES


def test_service_account_json_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("g__JSON", '["a list"]')
    with pytest.raises(EnvVarError, match="'g__JSON' is not a service account's JSON key"):
        google.google_sheets_client("g")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"private_key": ["-----BEGIN PRIVATE KEY-----SECRETMARK"]}, "no private_key text"),
        ({"private_key": {"k": "SECRETMARK"}}, "no private_key text"),
        ({"private_key": "-----BEGIN PRIVATE KEY-----SECRETMARK"}, "not a PEM private key"),
        ({"client_email": None}, "no client_email text"),
        ({"private_key_id": ["SECRETMARK"]}, "private_key_id is not text"),
    ],
)
def test_a_bad_service_account_key_is_never_quoted(
    monkeypatch: pytest.MonkeyPatch, service_account_json: str, change: Any, message: str
) -> None:
    """google-auth's messages repr() what they refuse (a private key that is not text,
    whole): the helpers' messages name fields only."""
    monkeypatch.setenv("g__JSON", json.dumps({**json.loads(service_account_json), **change}))
    with pytest.raises(EnvVarError) as e:
        google.google_sheets_client("g")
    assert message in str(e.value) and "SECRETMARK" not in str(e.value), str(e.value)


def test_oauth_expiry_in_gos_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("o__auth_type", "oauth")
    monkeypatch.setenv("o__oauth_AccessToken", "ya29.x")
    monkeypatch.setenv("o__oauth_Expiry", "2099-06-20 19:18:17.123456 -0700 PDT")
    creds = google.google_creds("googledrive", "o", google.DRIVE_SCOPES)
    assert creds.token == "ya29.x"
    assert creds.expiry.isoformat() == "2099-06-21T02:18:17"  # naive UTC, as google-auth wants
    monkeypatch.setenv("o__oauth_Expiry", "soon")
    with pytest.raises(EnvVarError, match="'o__oauth_Expiry' is not a time"):
        google.google_creds("googledrive", "o", google.DRIVE_SCOPES)


def test_expired_oauth_token_outside_the_system(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("o__auth_type", "oauth")
    monkeypatch.setenv("o__oauth_AccessToken", "ya29.x")
    monkeypatch.setenv("o__oauth_Expiry", "2001-01-01T00:00:00Z")
    # refresh_oauth's stand-in answers a token that expires at once.
    with pytest.raises(OAuthRefreshError, match="OAuth refresh failed for 'o' connection"):
        google.gmail_client("o")


def test_google_id() -> None:
    sheet = "1a2B3c4D5e6F7g8H9i0J_kl-mn"
    assert google.google_id(f"https://docs.google.com/spreadsheets/d/{sheet}/edit#gid=0") == sheet
    assert google.google_id(f"https://docs.google.com/forms/d/e/{sheet}/viewform") == sheet
    assert google.google_id(sheet) == sheet
    with pytest.raises(ValueError, match='Invalid Google ID in "short"'):
        google.google_id("short")


def test_only_a_google_requests_execute_is_an_activity(
    monkeypatch: pytest.MonkeyPatch, service_account_json: str
) -> None:
    monkeypatch.setenv("g__JSON", service_account_json)
    sheets = google.google_sheets_client("g")

    def gate(fn: Any) -> Decision:
        flags = {"in_activity": False, "loading": False, "inhibited": False}
        return decide(fn, is_user=lambda f: False, **flags)

    values = sheets.spreadsheets().values()
    request = values.get(spreadsheetId="s", range="A1")
    assert gate(sheets.spreadsheets) == Decision.DIRECT  # pickles to megabytes
    assert gate(values.get) == Decision.DIRECT
    assert gate(request.execute) == Decision.ACTIVITY
