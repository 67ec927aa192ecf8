"""The SDK's client helpers inside real sessions, against local fake APIs (no internet):
GitHub with a personal access token and as an app whose JWT the server signs, Slack, Jira,
Google with a service account's key, and the static-var helpers (OpenAI, Twilio, AWS)
reading AutoKitteh's variable names."""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.helpers import Stack, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: helpers
  vars:
    - name: gh__pat
      value: ghp_fake_pat_1
      secret: true
    - name: sl__oauth_access_token
      value: xoxb-fake-2
      secret: true
    - name: ai__apiKey
      value: sk-fake-3
      secret: true
    - name: tw__AccountSID
      value: AC123
    - name: tw__Username
      value: SK456
    - name: tw__Password
      value: tw-secret-4
      secret: true
    - name: aws__AccessKeyID
      value: AKIAFAKE
    - name: aws__SecretKey
      value: aws-secret-5
      secret: true
    - name: aws__Region
      value: eu-west-3
    - name: jira__BaseURL
      value: FAKE_API/jira
    - name: jira__Email
      value: bot@example.com
    - name: jira__Token
      value: jira-token-8
      secret: true
    - name: jo__oauth_AccessToken
      value: atlassian-oauth-9
      secret: true
    - name: gs__JSON
      value: SERVICE_ACCOUNT_JSON
      secret: true
    - name: bad__JSON
      value: "{not json"
      secret: true
    - name: go__auth_type
      value: oauth
    - name: go__oauth_AccessToken
      value: ya29.expired
      secret: true
    - name: go__oauth_Expiry
      value: "2024-06-20 19:18:17 -0700 PDT"
  connections:
    - name: app
      integration: github
      vars:
        - name: app_id
          value: "42"
        - name: install_id
          value: "7"
"""

CODE = """\
import autokitteh
from autokitteh.atlassian import confluence_client, get_base_url, jira_client
from autokitteh.aws import boto3_client
from autokitteh.google import gmail_client, google_drive_client, google_sheets_client
from autokitteh.github import github_client
from autokitteh.openai import openai_client
from autokitteh.slack import normalize_channel_name, slack_client
from autokitteh.twilio import twilio_client


def github_pat(event):
    g = github_client("gh", base_url=event.data["api"])
    issue = g.get_repo("octo/hello").get_issue(1)
    comment = issue.create_comment("thanks!")
    print("commented", comment.id)


def github_app(event):
    g = github_client("app", base_url=event.data["api"])
    print("repo", g.get_repo("octo/hello").full_name)


def slack(event):
    client = slack_client("sl", base_url=event.data["api"] + "/slack/")
    sent = client.chat_postMessage(channel="C1", text="hello")
    print("posted", sent["ts"])
    print("channel", normalize_channel_name("  Release Notes -- 2026!"))


def static_vars(event):
    print("openai", openai_client("ai").api_key)
    tw = twilio_client("tw")
    print("twilio", tw.username, tw.account_sid)
    s3 = boto3_client("aws", "s3")
    creds = s3._request_signer._credentials
    print("aws", s3.meta.region_name, creds.access_key, creds.secret_key)
    for helper in (lambda: openai_client("nope"), lambda: slack_client("nope"),
                   lambda: github_client("nope"), lambda: openai_client("bad name")):
        try:
            helper()
        except (autokitteh.errors.ConnectionInitError, ValueError) as e:
            print(type(e).__name__, e)


def jira(event):
    print("site", get_base_url("jira"))
    comment = jira_client("jira").issue_add_comment("PROJ-1", "thanks!")
    print("commented", comment["id"])


def sheets(event):
    client = google_sheets_client("gs", client_options={"api_endpoint": event.data["api"]})
    got = client.spreadsheets().values().get(spreadsheetId="sheet1", range="A1:B1").execute()
    print("values", got["values"])


def refusals(event):
    for helper in (lambda: jira_client("nope"), lambda: confluence_client("nope"),
                   lambda: jira_client("jo"), lambda: google_sheets_client("nope"),
                   lambda: gmail_client("bad"), lambda: google_drive_client("go")):
        try:
            helper()
        except autokitteh.AutoKittehError as e:
            print(type(e).__name__, e)
"""


class FakeApis(BaseHTTPRequestHandler):
    """GitHub's and Slack's endpoints the helpers call, as much of them as they read."""

    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.seen.append(
            {"method": self.command, "path": self.path, "auth": self.headers.get("Authorization")}
        )
        base = f"http://{self.headers['Host']}"
        path = urllib.parse.unquote(self.path.split("?")[0])
        if path == "/repos/octo/hello":
            repo = {"url": f"{base}/repos/octo/hello", "full_name": "octo/hello", "id": 1}
            return self._answer(200, repo)
        if path == "/repos/octo/hello/issues/1":
            return self._answer(200, {"url": f"{base}/repos/octo/hello/issues/1", "number": 1})
        if path == "/repos/octo/hello/issues/1/comments" and self.command == "POST":
            self.seen[-1]["body"] = json.loads(body)
            return self._answer(201, {"id": 99, "body": json.loads(body)["body"]})
        if path == "/app/installations/7/access_tokens":
            return self._answer(
                201, {"token": "ghs_install_6", "expires_at": "2099-01-01T00:00:00Z"}
            )
        if path == "/jira/rest/api/2/issue/PROJ-1/comment" and self.command == "POST":
            self.seen[-1]["body"] = json.loads(body)
            return self._answer(201, {"id": "10042", "body": json.loads(body)["body"]})
        if path == "/google/token":
            self.seen[-1]["body"] = urllib.parse.parse_qs(body)
            return self._answer(200, {"access_token": "ya29.fake-7", "expires_in": 3600})
        if path == "/v4/spreadsheets/sheet1/values/A1:B1":
            return self._answer(200, {"range": "Sheet1!A1:B1", "values": [["a", "b"]]})
        if path == "/slack/auth.test":
            return self._answer(200, {"ok": True, "user_id": "U1"})
        if path == "/slack/chat.postMessage":
            self.seen[-1]["body"] = body
            return self._answer(200, {"ok": True, "channel": "C1", "ts": "1700.01"})
        self._answer(404, {"message": "Not Found"})

    do_GET = do_POST = _handle


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, str, rsa.RSAPublicKey]]:
    home = tmp_path_factory.mktemp("helpers")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApis)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    # The one key plays the GitHub app's and the Google service account's.
    service_account = {
        "type": "service_account",
        "project_id": "helpers",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "bot@helpers.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"{api}/google/token",
    }
    manifest = MANIFEST.replace("FAKE_API", api).replace(
        "SERVICE_ACCOUNT_JSON", json.dumps(json.dumps(service_account))
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITHUB_PRIVATE_KEY", pem)  # the runner's, as AutoKitteh's server reads it
        # (the fake APIs are on this host: their port is let through the network fence)
        s = start_stack(home, {"AK_RUNNER__HOST_PORTS": str(server.server_address[1])})
    s.deploy(write_project(home / "helpers", {"autokitteh.yaml": manifest, "h.py": CODE}))
    yield s, api, key.public_key()
    s.stop()
    server.shutdown()
    server.server_close()


def _run(stack: Stack, function: str, api: str) -> list[str]:
    res = stack.ak(
        "session", "start", "-o", "helpers", "-p", f"h.py:{function}", "--durable",
        "-I", f"api={json.dumps(api)}",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    sid = res.stdout.strip().removeprefix("session_id: ")
    session = stack.wait_session(sid)
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    assert session["state"] == "COMPLETED", (session["error"], prints)
    return prints


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_github_client_with_a_personal_access_token(
    env: tuple[Stack, str, rsa.RSAPublicKey],
) -> None:
    stack, api, _ = env
    FakeApis.seen.clear()
    assert _run(stack, "github_pat", api) == ["commented 99"]
    comment = [r for r in FakeApis.seen if r["method"] == "POST"]
    assert comment == [
        {
            "method": "POST",
            "path": "/repos/octo/hello/issues/1/comments",
            "auth": "token ghp_fake_pat_1",
            "body": {"body": "thanks!"},
        }
    ]


def test_github_client_as_an_app_with_a_jwt_the_server_signs(
    env: tuple[Stack, str, rsa.RSAPublicKey],
) -> None:
    stack, api, public = env
    FakeApis.seen.clear()
    assert _run(stack, "github_app", api) == ["repo octo/hello"]
    token_request, repo_request = FakeApis.seen
    assert token_request["path"] == "/app/installations/7/access_tokens"
    jwt = token_request["auth"].removeprefix("Bearer ")
    header, claims, signature = jwt.split(".")
    assert json.loads(_b64(claims))["iss"] == 42
    public.verify(
        _b64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert repo_request["auth"] == "token ghs_install_6"  # the installation's token


def test_slack_client_checks_its_token_and_posts(
    env: tuple[Stack, str, rsa.RSAPublicKey],
) -> None:
    stack, api, _ = env
    FakeApis.seen.clear()
    assert _run(stack, "slack", api) == ["posted 1700.01", "channel release-notes-2026"]
    auth_test, post = FakeApis.seen
    assert auth_test["path"] == "/slack/auth.test"  # the token is checked first
    assert post["path"] == "/slack/chat.postMessage"
    assert post["auth"] == "Bearer xoxb-fake-2"
    assert "hello" in post["body"]


def test_static_var_helpers_read_autokittehs_variables(
    env: tuple[Stack, str, rsa.RSAPublicKey],
) -> None:
    stack, api, _ = env
    assert _run(stack, "static_vars", api) == [
        "openai sk-fake-3",
        "twilio SK456 AC123",
        "aws eu-west-3 AKIAFAKE aws-secret-5",
        "ConnectionInitError AutoKitteh connection 'nope' not initialized",
        "ConnectionInitError AutoKitteh connection 'nope' not initialized",
        "ConnectionInitError AutoKitteh connection 'nope' not initialized",
        "ValueError Invalid AutoKitteh connection name: 'bad name'",
    ]


def test_jira_client_comments_once_on_the_connections_site(
    env: tuple[Stack, str, rsa.RSAPublicKey],
) -> None:
    stack, api, _ = env
    FakeApis.seen.clear()
    assert _run(stack, "jira", api) == [f"site {api}/jira", "commented 10042"]
    basic = base64.b64encode(b"bot@example.com:jira-token-8").decode()
    assert FakeApis.seen == [  # an Atlassian Cloud API token: basic auth with the email
        {
            "method": "POST",
            "path": "/jira/rest/api/2/issue/PROJ-1/comment",
            "auth": f"Basic {basic}",
            "body": {"body": "thanks!"},
        }
    ]


def test_google_client_with_a_service_accounts_key(
    env: tuple[Stack, str, rsa.RSAPublicKey],
) -> None:
    stack, api, public = env
    FakeApis.seen.clear()
    assert _run(stack, "sheets", api) == ["values [['a', 'b']]"]
    token_request, sheets_request = FakeApis.seen
    # The key's token_uri gets a JWT the service account's key signed, for the scopes of
    # google_sheets_client; the API call then carries the token it answered.
    assert token_request["path"] == "/google/token"
    grant = token_request["body"]
    assert grant["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    header, claims, signature = grant["assertion"][0].split(".")
    public.verify(
        _b64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    got = json.loads(_b64(claims))
    assert got["iss"] == "bot@helpers.iam.gserviceaccount.com"
    assert got["scope"] == "https://www.googleapis.com/auth/spreadsheets"
    assert sheets_request["method"] == "GET"
    assert sheets_request["path"].startswith("/v4/spreadsheets/sheet1/values/A1%3AB1?")
    assert sheets_request["auth"] == "Bearer ya29.fake-7"


def test_jira_and_google_helpers_refuse_with_autokittehs_errors(
    env: tuple[Stack, str, rsa.RSAPublicKey],
) -> None:
    stack, api, _ = env
    FakeApis.seen.clear()
    prints = _run(stack, "refusals", api)
    assert prints[:5] == [
        "ConnectionInitError AutoKitteh connection 'nope' not initialized",
        "ConnectionInitError AutoKitteh connection 'nope' not initialized",
        "AtlassianOAuthError API calls not supported by 'jo', use a token-based connection instead",
        "ConnectionInitError AutoKitteh connection 'nope' not initialized",
        "EnvVarError Environment variable 'bad__JSON' is not JSON (Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1))",
    ]
    # An expired OAuth token is renewed through refresh_oauth, which this server refuses.
    assert prints[5].startswith(
        "OAuthRefreshError OAuth refresh failed for 'go' connection: refresh_oauth: OAuth is "
        "not supported by this server yet"
    ), prints
    assert len(prints) == 6
    assert FakeApis.seen == []  # no refusal reached any API
