"""Slack requests to a project's Slack connection, end to end and without the internet: the
test signs requests as Slack does (and forges some), and plays Slack's Web API for the
handler's reply (issue 19)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest

from tests.helpers import Stack, start_stack, until_throttled, write_project

SIGNING_SECRET = "slack-signing-secret-1"
APP, TEAM, BOT_USER = "A0APP", "T0TEAM", "U0BOT"

MANIFEST = """\
version: v1
project:
  name: slackproj
  vars:
    - name: FAKE_API
      value: {api}
  connections:
    - name: sl
      integration: slack
      vars:
        - name: auth_type
          value: oauthPrivate
        - name: install_ids
          value: {app}//{team}
        - name: private_signing_secret
          value: {secret}
          secret: true
        - name: oauth_access_token
          value: xoxb-fake-bot
          secret: true
  triggers:
    - name: on_mention
      connection: sl
      event_type: app_mention
      call: h.py:on_mention
    - name: on_command
      connection: sl
      event_type: slash_command
      call: h.py:on_command
    - name: on_click
      connection: sl
      event_type: interaction
      filter: data.type == "block_actions"
      call: h.py:on_click
"""

CODE = """\
import os

from autokitteh.slack import slack_client


def on_mention(event):
    data = event.data
    print("mention", data.user, data.text, repr(data.thread_ts))
    client = slack_client("sl", base_url=os.environ["FAKE_API"] + "/api/")
    client.chat_postMessage(channel=data.channel, text=f"hi <@{data.user}>", thread_ts=data.ts)


def on_command(event):
    print("command", event.data.command, event.data.text, event.data.user_id)


def on_click(event):
    print("clicked", event.data.actions[0]["action_id"], event.data.user["id"])
"""


class FakeSlack(BaseHTTPRequestHandler):
    posted: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if self.path == "/api/chat.postMessage":
            fields = {k: v[0] for k, v in parse_qs(raw).items()} if "=" in raw else json.loads(raw)
            self.posted.append({"auth": self.headers.get("Authorization"), **fields})
        answer = json.dumps({"ok": True, "ts": "1.2"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("slack")
    api = ThreadingHTTPServer(("127.0.0.1", 0), FakeSlack)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    # (the fake API is on this host: its port is let through the handlers' network fence)
    s = start_stack(home, {"AK_RUNNER__HOST_PORTS": str(api.server_address[1])})
    url = f"http://127.0.0.1:{api.server_address[1]}"
    manifest = MANIFEST.format(api=url, app=APP, team=TEAM, secret=SIGNING_SECRET)
    s.deploy(write_project(home / "sl", {"autokitteh.yaml": manifest, "h.py": CODE}))
    yield s
    s.stop()
    api.shutdown()
    api.server_close()


def _send(
    stack: Stack,
    route: str,
    body: bytes,
    content_type: str,
    secret: str = SIGNING_SECRET,
    ts: int | None = None,
    extra: dict[str, str] | None = None,
) -> tuple[int, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    base = f"v0:{stamp}:".encode() + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
        **(extra or {}),
    }
    status, _, data = stack.request("POST", f"/slack/{route}", body, headers)
    return status, data.decode()


def _mention(event_id: str, user: str = "U123", text: str = "<@U0BOT> hello") -> bytes:
    return json.dumps(
        {
            "type": "event_callback",
            "api_app_id": APP,
            "team_id": TEAM,
            "event_id": event_id,
            "authorizations": [{"user_id": BOT_USER, "is_bot": True}],
            "event": {
                "type": "app_mention",
                "user": user,
                "text": text,
                "channel": "C42",
                "ts": "1700.0001",
                "event_ts": "1700.0001",
            },
        }
    ).encode()


def _sessions(stack: Stack, entry: str) -> list[dict[str, Any]]:
    out = stack.ak("session", "list", "-p", "slackproj", "-j", check=True).stdout.splitlines()
    return [s for s in map(json.loads, out) if s["entrypoint"] == entry]


def _prints_of(stack: Stack, entry: str, count: int) -> list[str]:
    """The prints of the handler's sessions, once ``count`` of them have ended."""
    stack.wait_until(lambda: len(_sessions(stack, entry)) >= count, f"{count} {entry}")
    out = []
    for s in _sessions(stack, entry):
        assert stack.wait_session(s["session_id"])["state"] == "COMPLETED"
        out += stack.ak("session", "prints", s["session_id"], "-n", check=True).stdout.splitlines()
    return out


def test_a_mention_starts_a_session_that_answers_in_slack(stack: Stack) -> None:
    FakeSlack.posted.clear()
    assert _send(stack, "event", _mention("Ev1"), "application/json")[0] == 200
    prints = _prints_of(stack, "h.py:on_mention", 1)
    assert prints == ["mention U123 <@U0BOT> hello ''"]  # thread_ts: present, empty
    (post,) = FakeSlack.posted
    assert post["auth"] == "Bearer xoxb-fake-bot"
    assert (post["channel"], post["text"], post["thread_ts"]) == ("C42", "hi <@U123>", "1700.0001")


def test_retries_forgeries_and_the_apps_own_events_start_nothing(stack: Stack) -> None:
    before = len(_sessions(stack, "h.py:on_mention"))
    body = _mention("Ev2")
    assert _send(stack, "event", body, "application/json")[0] == 200
    for n in (1, 2):  # Slack's retries: the same event_id
        retry = {"X-Slack-Retry-Num": str(n), "X-Slack-Retry-Reason": "http_timeout"}
        assert _send(stack, "event", body, "application/json", extra=retry)[0] == 200
    assert _send(stack, "event", _mention("Ev3"), "application/json", secret="forged")[0] == 403
    stale = int(time.time()) - 600
    assert _send(stack, "event", _mention("Ev4"), "application/json", ts=stale)[0] == 403
    unsigned = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": str(int(time.time())),
    }
    assert stack.request("POST", "/slack/event", _mention("Ev5"), unsigned)[0] == 401
    assert _send(stack, "event", _mention("Ev6"), "text/plain")[0] == 400
    own = _mention("Ev7", user=BOT_USER)  # the app's own reply must not start it again
    assert _send(stack, "event", own, "application/json")[0] == 200
    assert _send(stack, "event", _mention("Ev8"), "application/json")[0] == 200  # counts
    _prints_of(stack, "h.py:on_mention", before + 2)
    assert len(_sessions(stack, "h.py:on_mention")) == before + 2


def test_a_slash_command_is_answered_and_starts_its_trigger(stack: Stack) -> None:
    form = urlencode(
        {
            "api_app_id": APP,
            "team_id": TEAM,
            "command": "/ak",
            "text": "deploy prod",
            "user_id": "U77",
            "channel_id": "C1",
            "response_url": "https://hooks.example/1",
            "trigger_id": "t1",
        }
    ).encode()
    status, reply = _send(stack, "command", form, "application/x-www-form-urlencoded")
    assert status == 200
    assert json.loads(reply) == {
        "response_type": "ephemeral",
        "text": "Your command: `/ak deploy prod`",
    }
    assert _prints_of(stack, "h.py:on_command", 1) == ["command /ak deploy prod U77"]


def test_a_signed_command_or_click_sent_again_starts_nothing_new(stack: Stack) -> None:
    """Commands and interactions have no id Slack sends again: a captured signed request
    could start its trigger again for the whole five minutes; it is the same request."""
    before = len(_sessions(stack, "h.py:on_command"))
    form = urlencode({"api_app_id": APP, "team_id": TEAM, "command": "/ak", "text": "again",
                      "user_id": "U78", "trigger_id": "t2"}).encode()  # fmt: skip
    stamp = int(time.time())
    for _ in range(3):
        status, reply = _send(stack, "command", form, "application/x-www-form-urlencoded", ts=stamp)
        assert status == 200 and "again" in json.loads(reply)["text"]
    # Typed again: Slack signs it at another time (and with another trigger_id).
    again = form.replace(b"t2", b"t3")
    assert _send(stack, "command", again, "application/x-www-form-urlencoded")[0] == 200
    prints = _prints_of(stack, "h.py:on_command", before + 2)
    assert len(_sessions(stack, "h.py:on_command")) == before + 2
    assert prints.count("command /ak again U78") == 2


def test_a_button_click_starts_its_trigger(stack: Stack) -> None:
    payload = {
        "type": "block_actions",
        "api_app_id": APP,
        "team": {"id": TEAM, "domain": "example"},
        "user": {"id": "U88"},
        "actions": [{"type": "button", "action_id": "approve", "value": "yes"}],
    }
    form = urlencode({"payload": json.dumps(payload)}).encode()
    assert _send(stack, "interaction", form, "application/x-www-form-urlencoded")[0] == 200
    assert _prints_of(stack, "h.py:on_click", 1) == ["clicked approve U88"]


def test_a_request_url_check_is_answered_only_when_signed(stack: Stack) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "c-123", "token": "x"}).encode()
    status, reply = _send(stack, "event", body, "application/json")
    assert (status, json.loads(reply)) == (200, {"challenge": "c-123"})
    assert _send(stack, "event", body, "application/json", secret="forged")[0] == 403


def test_a_strangers_refused_requests_do_not_slow_down_the_apps(stack: Stack) -> None:
    """Slack sends every app's requests from a few shared addresses: someone's own app
    pointed here (its URL checks refused) must not get the connections' requests from the
    same address refused (429)."""
    body = json.dumps({"type": "url_verification", "challenge": "c-9", "token": "x"}).encode()
    statuses = until_throttled(
        lambda _: _send(stack, "event", body, "application/json", secret="theirs")[0], int
    )
    assert statuses.count(403) >= 50 and set(statuses) == {403, 429}, statuses
    assert _send(stack, "event", _mention("Ev-after"), "application/json")[0] == 200
