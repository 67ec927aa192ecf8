"""GitHub deliveries to a project's GitHub connection, end to end and without the internet:
the test signs deliveries as GitHub does (and forges some), and plays GitHub's API for the
handler's reply (issue 19)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pty
import select
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Stack, start_stack, until_throttled, write_project

KEY = "k3y0123456789abcdefghijklm"  # the connection's webhook path
SECRET = "whsec-test-1"  # the webhook secret set in GitHub and in the connection

# A GitHub connection in PAT mode (the manifests below format in its key and secret).
PAT_CONNECTION = """\
  connections:
    - name: gh
      integration: github
      vars:
        - name: auth_type
          value: pat
        - name: pat
          value: ghp_fake_pat
          secret: true
        - name: pat_key
          value: {key}
        - name: pat_secret
          value: {secret}
          secret: true
"""

MANIFEST = (
    """\
version: v1
project:
  name: ghproj
  vars:
    - name: FAKE_API
      value: {api}
"""
    + PAT_CONNECTION
    + """\
  triggers:
    - name: on_comment
      connection: gh
      event_type: issue_comment
      filter: data.action == "created"
      call: h.py:on_comment
    - name: on_slash
      connection: gh
      event_type: slash_command
      call: h.py:on_slash
    - name: waiter
      webhook: {{}}
      call: h.py:wait_for_push
"""
)

CODE = """\
import os

import autokitteh

from autokitteh.github import github_client


def on_comment(event):
    data = event.data
    print("comment", data.comment.body.splitlines()[0], data.slash_commands)
    repo = github_client("gh", base_url=os.environ["FAKE_API"]).get_repo(data.repository.full_name)
    repo.get_issue(data.issue.number).create_comment(f"ack {data.comment.id}")


def on_slash(event):
    print("slash", event.data.command.name, event.data.command.args, event.data.actual_event_type)


def wait_for_push(event):
    sub = autokitteh.subscribe("gh", "event_type == 'push'")
    print("subscribed")
    got = autokitteh.next_event(sub, timeout=60, full=True)
    print("got", got.event_type, got.data.ref)
"""


class FakeGitHub(BaseHTTPRequestHandler):
    comments: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        base = f"http://{self.headers['Host']}"
        if self.path.startswith("/repos/octo/hello/issues/"):
            number = int(self.path.rsplit("/", 1)[1])
            return self._answer(200, {"url": f"{base}{self.path}", "number": number})
        if self.path.startswith("/repos/octo/hello"):
            return self._answer(200, {"url": f"{base}/repos/octo/hello", "full_name": "octo/hello"})
        self._answer(404, {})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.comments.append({"path": self.path, "body": body["body"]})
        self._answer(201, {"id": len(self.comments), "body": body["body"]})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("github")
    api = ThreadingHTTPServer(("127.0.0.1", 0), FakeGitHub)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    # (the fake API is on this host: its port is let through the handlers' network fence)
    s = start_stack(home, {"AK_RUNNER__HOST_PORTS": str(api.server_address[1])})
    url = f"http://127.0.0.1:{api.server_address[1]}"
    manifest = MANIFEST.format(api=url, key=KEY, secret=SECRET)
    s.deploy(write_project(home / "gh", {"autokitteh.yaml": manifest, "h.py": CODE}))
    yield s
    s.stop()
    api.shutdown()
    api.server_close()


def _comment(comment_id: int, action: str = "created", body: str = "thanks") -> bytes:
    return json.dumps(
        {
            "action": action,
            "issue": {"number": 7, "title": "broken"},
            "comment": {"id": comment_id, "body": body},
            "repository": {"full_name": "octo/hello"},
            "sender": {"login": "mona"},
        }
    ).encode()


def _deliver(
    stack: Stack,
    body: bytes,
    delivery: str,
    secret: str = SECRET,
    event: str = "issue_comment",
    key: str = KEY,
) -> tuple[int, str]:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature,
    }
    status, _, data = stack.request("POST", f"/github/webhook/{key}", body, headers)
    return status, data.decode()


def _sessions(stack: Stack, entry: str) -> list[dict[str, Any]]:
    out = stack.ak("session", "list", "-p", "ghproj", "-j", check=True).stdout.splitlines()
    return [s for s in map(json.loads, out) if s["entrypoint"] == entry]


def _finished(stack: Stack, entry: str, count: int) -> list[dict[str, Any]]:
    """The handler's sessions once ``count`` of them exist and each has ended."""
    stack.wait_until(lambda: len(_sessions(stack, entry)) >= count, f"{count} {entry} sessions")
    found = _sessions(stack, entry)
    return [stack.wait_session(s["session_id"]) for s in found]


def test_a_signed_delivery_starts_the_trigger_and_the_reply_reaches_github(
    stack: Stack,
) -> None:
    FakeGitHub.comments.clear()
    status, _ = _deliver(stack, _comment(101, body="thanks\n/deploy prod now"), "d-1")
    assert status == 200
    (session,) = _finished(stack, "h.py:on_comment", 1)
    assert session["state"] == "COMPLETED", session
    prints = stack.ak("session", "prints", session["session_id"], "-n", check=True).stdout
    assert "comment thanks [{'name': 'deploy', 'args': ['prod', 'now']" in prints
    assert FakeGitHub.comments == [
        {"path": "/repos/octo/hello/issues/7/comments", "body": "ack 101"}
    ]
    # The slash command in the comment is an event of its own.
    (slash,) = _finished(stack, "h.py:on_slash", 1)
    prints = stack.ak("session", "prints", slash["session_id"], "-n", check=True).stdout
    assert prints.strip() == "slash deploy ['prod', 'now'] issue_comment"


def test_a_redelivery_starts_nothing_new(stack: Stack) -> None:
    before = len(_sessions(stack, "h.py:on_comment"))
    body = _comment(202)
    assert _deliver(stack, body, "d-2")[0] == 200
    _finished(stack, "h.py:on_comment", before + 1)
    for _ in range(3):  # GitHub's "Redeliver", the same X-GitHub-Delivery each time
        assert _deliver(stack, body, "d-2")[0] == 200
    # A new delivery after them shows they were all handled, and started nothing.
    assert _deliver(stack, _comment(203), "d-3")[0] == 200
    sessions = _finished(stack, "h.py:on_comment", before + 2)
    assert len(sessions) == before + 2


def test_forged_or_filtered_deliveries_start_nothing(stack: Stack) -> None:
    before = len(_sessions(stack, "h.py:on_comment"))
    forged, text = _deliver(stack, _comment(301), "d-4", secret="not-the-secret")
    assert (forged, text.strip()) == (400, "bad signature")
    unsigned = _comment(302)
    status, _, _ = stack.request(
        "POST",
        f"/github/webhook/{KEY}",
        unsigned,
        {"Content-Type": "application/json", "X-GitHub-Event": "issue_comment"},
    )
    assert status == 400
    # Unknown key: not ours, nothing dispatched (as AutoKitteh: 200, empty).
    assert _deliver(stack, _comment(303), "d-5", key="nobody")[0] == 200
    # Signed, but the trigger's filter wants "created".
    assert _deliver(stack, _comment(304, action="edited"), "d-6")[0] == 200
    assert _deliver(stack, _comment(305), "d-7")[0] == 200  # this one counts
    sessions = _finished(stack, "h.py:on_comment", before + 1)
    assert len(sessions) == before + 1
    events = stack.ak("event", "list", "-p", "ghproj", "-j", check=True).stdout
    assert '"issue_comment"' in events


def test_a_bad_event_header_or_payload_is_400(stack: Stack) -> None:
    body = b"not json"
    assert _deliver(stack, body, "d-8")[0] == 400
    assert _deliver(stack, _comment(401), "d-9", event="Bad Event!")[0] == 400
    # Nested deeper than events may be (and than Python's parser, and msgpack, take): a
    # clear 400 every time GitHub sends it again, never 503.
    for depth in (101, 1500, 3000):
        deep = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
        status, text = _deliver(stack, deep, f"deep-{depth}")
        assert (status, text.strip()) == (
            400,
            "Bad Request: the payload nests lists and objects more than 100 levels deep",
        ), depth


def test_a_signed_body_sent_again_under_new_delivery_ids_starts_nothing_new(
    stack: Stack,
) -> None:
    """X-GitHub-Delivery is not signed: whoever saw a signed delivery (GitHub's Recent
    Deliveries page, a proxy's log) could replay it under fresh ids, forever."""
    before = len(_sessions(stack, "h.py:on_comment"))
    body = _comment(250)
    assert _deliver(stack, body, "r-0")[0] == 200
    _finished(stack, "h.py:on_comment", before + 1)
    for i in range(1, 4):
        assert _deliver(stack, body, f"r-{i}")[0] == 200
    assert _deliver(stack, _comment(251), "r-9")[0] == 200  # shows the replays were handled
    sessions = _finished(stack, "h.py:on_comment", before + 2)
    assert len(sessions) == before + 2


def test_someone_elses_repository_webhook_on_the_app_route_is_ignored(stack: Stack) -> None:
    """Anyone can point a repository webhook of theirs at /github/webhook: GitHub sends it
    from the addresses it sends everyone's deliveries from, with the repository's id and no
    installation. It is for no connection here: 200, and no address is slowed down."""
    noise = json.dumps({"zen": "x", "hook_id": 1, "repository": {"id": 99}}).encode()
    for i in range(70):
        signature = "sha256=" + hmac.new(b"theirs", noise, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": f"n-{i}",
            "X-GitHub-Hook-Installation-Target-ID": "99",
            "X-Hub-Signature-256": signature,
        }
        assert stack.request("POST", "/github/webhook", noise, headers)[0] == 200
    before = len(_sessions(stack, "h.py:on_comment"))
    assert _deliver(stack, _comment(260), "after-noise")[0] == 200
    _finished(stack, "h.py:on_comment", before + 1)


def test_a_running_session_subscribed_to_the_connection_gets_its_event(stack: Stack) -> None:
    trigger = json.loads(
        stack.ak("trigger", "get", "waiter", "-p", "ghproj", "-j", check=True).stdout
    )
    status, headers, _ = stack.request("POST", f"/webhooks/{trigger['webhook_slug']}", b"{}")
    assert status == 202
    sid = stack.session_of("ghproj", headers["autokitteh-event-id"])
    stack.wait_output("subscribed", "session", "prints", sid)
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    assert _deliver(stack, body, "s-1", event="push")[0] == 200
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    assert prints == ["subscribed", "got push refs/heads/main"]


INIT_MANIFEST = """\
version: v1
project:
  name: ghinit
  connections:
    - name: gh
      integration: github
  triggers:
    - name: on_push
      connection: gh
      event_type: push
      call: h.py:on_push
"""


def test_ak_connection_init_sets_a_mode_without_echoing_secrets(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("ghinit")
    code = "def on_push(event):\n    print('pushed', event.data.ref)\n"
    stack.deploy(write_project(root, {"autokitteh.yaml": INIT_MANIFEST, "h.py": code}))
    before = stack.ak("connection", "test", "ghinit/gh", check=True).stdout
    assert 'code:CODE_INIT_REQUIRED message:"Init required"' in before
    secrets = "pat=ghp_init_secret_1\npat_secret=hook-secret-2\n"
    res = stack.ak("connection", "init", "ghinit/gh", "--mode", "pat", input=secrets)
    assert res.returncode == 0, res.stderr
    assert "ghp_init_secret_1" not in res.stdout + res.stderr
    assert "hook-secret-2" not in res.stdout + res.stderr
    assert "set pat (secret)" in res.stderr and "set pat_key" in res.stderr
    url = res.stdout.splitlines()[0].removeprefix("webhook URL: ")
    assert url.startswith(stack.url + "/github/webhook/"), res.stdout
    assert 'status: code:CODE_OK message:"Using PAT + webhook"' in res.stdout
    key = url.rsplit("/", 1)[1]
    body = json.dumps({"ref": "refs/heads/main", "commits": []}).encode()
    assert _deliver(stack, body, "p-1", secret="hook-secret-2", event="push", key=key)[0] == 200
    stack.wait_until(
        lambda: any(
            s["entrypoint"] == "h.py:on_push"
            for s in map(
                json.loads,
                stack.ak("session", "list", "-p", "ghinit", "-j").stdout.splitlines(),
            )
        ),
        "a session of the push",
    )
    # A mode's missing var is named, and nothing is read from a terminal here.
    res = stack.ak("connection", "init", "ghinit/gh", "--mode", "app", input="app_id=5\n")
    assert res.returncode != 0 and "install_id (the app installation's ID) is needed" in (
        res.stderr
    )


PAT_MANIFEST = (
    """\
version: v1
project:
  name: {name}
"""
    + PAT_CONNECTION
    + """\
  triggers:
    - name: on_push
      connection: gh
      event_type: push
      call: h.py:on_push
"""
)
PUSH_CODE = "def on_push(event):\n    print('pushed', event.data.ref)\n"


def _pat_project(stack: Stack, root: Path, name: str, key: str, secret: str) -> None:
    manifest = PAT_MANIFEST.format(name=name, key=key, secret=secret)
    stack.deploy(write_project(root / name, {"autokitteh.yaml": manifest, "h.py": PUSH_CODE}))


def _pushes(stack: Stack, project: str) -> int:
    out = stack.ak("session", "list", "-p", project, "-j", check=True).stdout.splitlines()
    return sum(json.loads(line)["entrypoint"] == "h.py:on_push" for line in out)


def test_rerunning_init_keeps_the_webhook_url_unless_told(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Rotating the PAT must not move the webhook URL GitHub delivers to."""
    _pat_project(stack, tmp_path_factory.mktemp("rot"), "rot", "rotkey0123456789", "s1")
    res = stack.ak("connection", "init", "rot/gh", "--mode", "pat",
                   input="pat=ghp_new\npat_secret=s1\n")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"webhook URL: {stack.url}/github/webhook/rotkey0123456789\n")
    assert "kept pat_key" in res.stderr and "set pat_key" not in res.stderr
    # Asked for: a new key (the old URL then routes nothing).
    res = stack.ak("connection", "init", "rot/gh", "--var", "pat_key=",
                   input="pat=ghp_new\npat_secret=s1\n")  # fmt: skip
    assert res.returncode == 0, res.stderr
    url = res.stdout.splitlines()[0].removeprefix("webhook URL: ")
    assert url.startswith(stack.url + "/github/webhook/") and "rotkey" not in url


def test_init_changes_nothing_when_it_fails(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("keep")
    _pat_project(stack, root, "keep", "keepkey0123456789", "old")
    _pat_project(stack, root, "taken", "takenkey0123456789", "o")
    res = stack.ak("connection", "init", "keep/gh", "--mode", "pat",
                   input="pat=ghp_x\npat_secret=new\npat_key=takenkey0123456789\n")  # fmt: skip
    assert res.returncode == 42, res.stderr
    assert "pat_key='takenkey0123456789' is already used by another connection" in res.stderr
    assert "set " not in res.stderr
    # The old secret still signs: nothing was changed.
    body = json.dumps({"ref": "refs/heads/keep"}).encode()
    assert _deliver(stack, body, "k-1", "old", "push", "keepkey0123456789")[0] == 200
    stack.wait_until(lambda: _pushes(stack, "keep") == 1, "the push's session")


def test_init_refuses_empty_values_unless_given_on_purpose(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _pat_project(stack, tmp_path_factory.mktemp("empty"), "empty", "emptykey0123456789", "e")
    res = stack.ak("connection", "init", "empty/gh", input="pat=ghp_x\npat_secret=\n")
    assert res.returncode == 40
    assert "Error: pat_secret (the webhook's secret, as set in GitHub) is empty: give the " \
           "secret, or --var pat_secret= to accept unsigned deliveries" in res.stderr  # fmt: skip
    res = stack.ak("connection", "init", "empty/gh", input="pat=\npat_secret=x\n")
    assert (res.returncode, res.stderr.strip()) == (
        40,
        "Error: pat (the personal access token) is empty: give a value",
    )
    # Nothing was set: the old secret still signs.
    body = json.dumps({"ref": "refs/heads/e"}).encode()
    assert _deliver(stack, body, "e-1", "e", "push", "emptykey0123456789")[0] == 200
    res = stack.ak("connection", "init", "empty/gh", "--var", "pat_secret=", input="pat=ghp_x\n")
    assert res.returncode == 0, res.stderr
    assert "anyone who knows the webhook URL can send events" in res.stdout
    res = stack.ak("connection", "init", "empty/gh", "--mode", "nope")
    assert (res.returncode, res.stderr.strip()) == (
        40,
        'Error: mode "nope" of github: use one of pat, app',
    )


def test_init_of_an_app_on_a_terminal_asks_and_routes_the_installation(stack: Stack) -> None:
    stack.ak("project", "create", "--name", "tty", check=True)
    stack.ak("connection", "create", "gh", "-i", "github", "-p", "tty", check=True)
    before = stack.ak("connection", "test", "tty/gh", check=True).stdout
    assert "CODE_INIT_REQUIRED" in before
    pid, fd = pty.fork()
    if pid == 0:  # the child: ak on a terminal
        ak = str(Path(sys.executable).parent / "ak")
        os.execve(ak, ["ak", "connection", "init", "tty/gh", "--mode", "app"], stack.env)
    out, answers = b"", iter(["12345", "678", "hook-secret"])
    while select.select([fd], [], [], 60)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child is gone
            break
        if not chunk:
            break
        out += chunk
        if chunk.rstrip().endswith(b":"):  # a prompt
            os.write(fd, (next(answers, "") + "\n").encode())
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    text = out.decode(errors="replace")
    assert code == 0 and "Traceback" not in text, text[-600:]
    assert "hook-secret" not in text  # not echoed
    assert 'status: code:CODE_OK message:"Using GitHub app"' in text, text[-600:]
    names = stack.ak("var", "get", "-c", "tty/gh", "-j", check=True).stdout
    assert "install_key__12345__678" in names
    # Another installation: the earlier one's routing var goes (it would route it here).
    answers_ = "app_id=12345\ninstall_id=679\nclient_secret=hook-secret\n"
    res = stack.ak("connection", "init", "tty/gh", "--mode", "app", input=answers_)
    assert res.returncode == 0 and "deleted install_key__12345__678" in res.stderr, res.stderr
    names = stack.ak("var", "get", "-c", "tty/gh", "-j", check=True).stdout
    assert "install_key__12345__679" in names and "install_key__12345__678" not in names
    # From app to PAT mode and back: the other mode's routing var goes each time (it would
    # keep routing that mode's deliveries to this connection).
    res = stack.ak("connection", "init", "tty/gh", "--mode", "pat",
                   input="pat=ghp_x\npat_secret=s\n")  # fmt: skip
    assert res.returncode == 0 and "deleted install_key__12345__679" in res.stderr, res.stderr
    names = stack.ak("var", "get", "-c", "tty/gh", "-j", check=True).stdout
    assert "pat_key" in names and "install_key__" not in names
    res = stack.ak("connection", "init", "tty/gh", "--mode", "app", input=answers_)
    assert res.returncode == 0 and "deleted pat_key" in res.stderr, res.stderr
    names = stack.ak("var", "get", "-c", "tty/gh", "-j", check=True).stdout
    assert "pat_key" not in names and "install_key__12345__679" in names
    res = stack.ak("connection", "init", "tty/gh", "--mode", "app",
                   input="app_id=12345\ninstall_id=x9\nclient_secret=s\n")  # fmt: skip
    assert (res.returncode, res.stderr.strip()) == (
        40,
        "Error: install_id must be GitHub's ID (a number): 'x9'",
    )


def test_the_events_of_a_connection_trigger_are_those_its_connection_offered_it(
    stack: Stack,
) -> None:
    before = len(_sessions(stack, "h.py:on_slash"))
    assert _deliver(stack, _comment(909, body="/ship it"), "d-events")[0] == 200
    slash = _finished(stack, "h.py:on_slash", before + 1)
    for trigger, event_type in (("on_comment", "issue_comment"), ("on_slash", "slash_command")):
        listed = stack.api("event.list", project="ghproj", trigger=trigger)
        assert listed and {e["event_type"] for e in listed} == {event_type}, listed
        assert {e["destination_id"] for e in listed} == {
            c["connection_id"] for c in stack.api("connection.list", project="ghproj")
        }
    newest = {e["event_id"] for e in stack.api("event.list", project="ghproj", trigger="on_slash")}
    assert {s["event_id"] for s in slash} <= newest
    waiter = next(t for t in stack.api("trigger.list", project="ghproj") if t["name"] == "waiter")
    hooked = stack.api("event.list", project="ghproj", trigger="waiter")  # its webhook's own
    assert {e["destination_id"] for e in hooked} <= {waiter["trigger_id"]}, hooked


def test_a_sender_of_forged_deliveries_is_slowed_down(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each refused delivery costs the store a lookup and a signature check: an address
    that keeps sending them to one connection gets 429 for that connection before its
    request is looked at. Another connection's deliveries from the same address (GitHub
    sends everyone's from a few) are not slowed down. Last in this file: it spends the
    address's budget for the module's connection, and a delivery to it right after gets 429."""
    _pat_project(stack, tmp_path_factory.mktemp("next"), "nextdoor", "nextdoorkey0123456789", "n")
    statuses = until_throttled(
        lambda i: _deliver(stack, _comment(500), f"f-{i}", secret="guess")[0], int
    )
    assert statuses.count(400) >= 50 and set(statuses) == {400, 429}, statuses
    body = json.dumps({"ref": "refs/heads/next"}).encode()
    assert _deliver(stack, body, "nd-1", "n", "push", "nextdoorkey0123456789")[0] == 200
