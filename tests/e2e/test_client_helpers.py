"""The SDK's client helpers inside real sessions, against local fake APIs (no internet):
GitHub with a personal access token and as an app whose JWT the server signs, Slack, and
the static-var helpers (OpenAI, Twilio, AWS) reading AutoKitteh's variable names."""

from __future__ import annotations

import base64
import json
import threading
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
from autokitteh.aws import boto3_client
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
        path = self.path.split("?")[0]
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
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITHUB_PRIVATE_KEY", pem)  # the runner's, as AutoKitteh's server reads it
        s = start_stack(home)
    s.deploy(write_project(home / "helpers", {"autokitteh.yaml": MANIFEST, "h.py": CODE}))
    yield s, f"http://127.0.0.1:{server.server_address[1]}", key.public_key()
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
