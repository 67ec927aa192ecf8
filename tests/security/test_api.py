"""The HTTP API: tokens required, only public operations, typed requests, projects' builds
kept apart, tokens never at rest in plaintext (issue 16)."""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ak_ingress.service import run as run_ingress
from akcore import timefmt, wire
from akcore.config import Settings
from akcore.errors import AKError

from tests.helpers import AK, Stack, start_stack, until_throttled, wait_until, write_project

MARKER = "pwned-by-unauthenticated-call"
MANIFEST = """\
version: v1
project:
  name: {name}
  vars:
    - name: SECRET_KEY
      value: sec-ret-value-7qx
      secret: true
  triggers:
    - name: hook
      call: h.py:on_hook
      webhook: {{}}
"""
CODE = """\
def on_hook(event):
    print("hook")


def main(**kwargs):
    print("main ran")
"""
EVIL = f"""\
import subprocess
import sys
import time


def main(**kwargs):
    subprocess.run(["touch", "{{marker}}"])
    print("{MARKER}")
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("api")
    s = start_stack(home)
    for name in ("alpha", "beta"):
        project = write_project(home / name, {"autokitteh.yaml": MANIFEST.format(name=name)})
        (project / "h.py").write_text(CODE)
        s.deploy(project)
    yield s
    s.stop()


def post(
    stack: Stack, op: str, args: Any, headers: dict[str, str] | None = None
) -> tuple[int, wire.StoreReply]:
    body = wire.encode(wire.StoreRequest(args=args))
    sent = {"Content-Type": "application/msgpack", **(headers or {})}
    status, _, data = stack.request("POST", f"/api/{op}", body, sent)
    return status, wire.decode(wire.StoreReply, data)


def active(stack: Stack, project: str) -> dict[str, Any]:
    deps = stack.ak("deployment", "list", "-p", project, "-j", check=True).stdout.splitlines()
    return next(d for d in map(json.loads, deps) if d["state"] == "ACTIVE")


def test_unauthenticated_calls_get_401_and_run_nothing(stack: Stack, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    dep = active(stack, "alpha")
    files = {"h.py": EVIL.format(marker=marker).encode()}
    attempts = [
        ("manifest.apply", {"text": MANIFEST.format(name="evil")}),
        ("build.create", {"project": "alpha", "files": files}),
        ("deployment.create", {"project": "alpha", "build_id": dep["build_id"]}),
        ("deployment.activate", {"deployment_id": dep["deployment_id"]}),
        ("session.start", {"project": "alpha", "entrypoint": "h.py:main"}),
    ]
    for op, args in attempts:
        status, reply = post(stack, op, args)
        assert status == 401, op
        assert reply.error_kind == "unauthenticated"
        assert "missing API token" in reply.error and "ak auth create-token" in reply.error
    assert "evil" not in stack.ak("project", "list", check=True).stdout
    deps = stack.ak("deployment", "list", "-p", "alpha", "-j", check=True).stdout.splitlines()
    assert len(deps) == 1
    assert stack.ak("session", "list", "-p", "alpha", "-j", check=True).stdout == ""
    assert not marker.exists() and MARKER not in stack.output()


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("var.get", {"project": "alpha", "reveal": True}),
        ("session.env", {"project_id": "prj_00000000000000000000000000"}),
        ("build.get", {"build_id": "bld_00000000000000000000000000"}),
        ("session.stop", {"session": "alpha"}),
        ("project.list", {}),
        ("no.such_op", {}),
    ],
)
def test_every_api_call_needs_a_token(stack: Stack, op: str, args: dict[str, Any]) -> None:
    status, reply = post(stack, op, args)
    assert status == 401 and "sec-ret-value" not in str(reply.result)
    assert "missing API token" in reply.error


@pytest.mark.parametrize(
    "header",
    ["Bearer akt_not-a-token-the-server-knows-xxxxxxxxxxxxxxxx", "Bearer ", "Basic abc", "x"],
)
def test_a_bad_token_gets_401(stack: Stack, header: str) -> None:
    status, reply = post(stack, "project.list", {}, {"Authorization": header})
    assert status == 401
    assert reply.error.startswith(("invalid API token", "invalid authorization header"))
    assert "ak auth set-token" in reply.error


def test_the_cli_without_a_token_says_how_to_get_one(stack: Stack) -> None:
    env = {**stack.env, "XDG_CONFIG_HOME": str(Path(stack.env["XDG_CONFIG_HOME"]) / "none")}
    res = subprocess.run([AK, "project", "list"], env=env, capture_output=True, text=True)
    assert res.returncode == 41
    assert "missing API token" in res.stderr and "credentials" in res.stderr


@pytest.mark.parametrize(
    "op",
    ["session.env", "pyenv.prepare", "webhook.lookup", "build.get", "token.add", "token.check"],
)
def test_internal_operations_are_not_reachable_even_with_a_token(stack: Stack, op: str) -> None:
    status, reply = post(stack, op, {}, stack.auth())
    assert status == 404
    assert reply.error.startswith(f"unknown operation '{op}'")


@pytest.mark.parametrize(
    ("op", "args", "message"),
    [
        ("var.get", {"project": "alpha", "evil": 1}, "var.get: unknown field 'evil'"),
        ("var.get", {"project": ["alpha"]}, "var.get: field 'project' must be text, not list"),
        ("session.start", {"entrypoint": 3}, "field 'entrypoint' must be text, not int"),
        ("build.create", {"project": "alpha", "files": {"a.py": 1}}, "a map of text to bytes"),
    ],
)
def test_malformed_requests_get_400_naming_the_field(
    stack: Stack, op: str, args: dict[str, Any], message: str
) -> None:
    status, reply = post(stack, op, args, stack.auth())
    assert status == 400 and message in reply.error


def test_session_start_refuses_a_build_of_another_project(stack: Stack) -> None:
    alpha, beta = active(stack, "alpha"), active(stack, "beta")
    args = {"entrypoint": "h.py:main", "project": "alpha", "build_id": beta["build_id"]}
    status, reply = post(stack, "session.start", args, stack.auth())
    assert status == 400
    assert f'build "{beta["build_id"]}" belongs to another project' in reply.error
    args["deployment_id"], args["project"] = alpha["deployment_id"], ""
    assert post(stack, "session.start", args, stack.auth())[0] == 400
    assert stack.ak("session", "list", "-p", "alpha", "-j", check=True).stdout == ""


def test_tokens_from_the_cli_and_none_at_rest_in_plaintext(stack: Stack, tmp_path: Path) -> None:
    made = stack.ak("auth", "create-token", "-n", "ci", check=True).stdout.strip()
    assert made.startswith("akt_") and made != stack.token
    as_json = json.loads(stack.ak("auth", "create-token", "-j", check=True).stdout)
    other = {**stack.env, "AK_TOKEN": made}
    who = subprocess.run([AK, "auth", "whoami", "-j"], env=other, capture_output=True, text=True)
    assert json.loads(who.stdout)["name"] == "ci"
    # set-token writes the credentials file AutoKitteh's way, owner-only.
    home = tmp_path / "config"
    mine = {**stack.env, "XDG_CONFIG_HOME": str(home)}
    subprocess.run([AK, "auth", "set-token", as_json], env=mine, check=True)
    creds = home / "autokitteh" / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert creds.read_text() == f"{stack.url.split('://')[1]}: {as_json}\n"
    assert (
        "project_id"
        in subprocess.run(
            [AK, "project", "list", "-j"], env=mine, capture_output=True, text=True, check=True
        ).stdout
    )
    # Nothing the server keeps holds a token: only digests.
    data = Path(stack.env["XDG_DATA_HOME"])
    for path in [p for p in data.rglob("*") if p.is_file()] + [stack.log]:
        blob = path.read_bytes()
        for token in (made, as_json, stack.token):
            assert token.encode() not in blob, f"a raw token in {path}"


def test_a_revoked_token_is_refused_at_once_and_the_last_one_is_kept(stack: Stack) -> None:
    """`ak auth list-tokens` shows ids and names (never a token); `ak auth revoke-token`
    makes the server refuse a token, even one it took a moment ago."""
    leaked = stack.ak("auth", "create-token", "-n", "leaked", check=True).stdout.strip()
    mine = {"Authorization": f"Bearer {leaked}"}
    assert post(stack, "project.list", {}, mine)[0] == 200  # taken, and remembered
    listed = [
        json.loads(x) for x in stack.ak("auth", "list-tokens", "-j", check=True).stdout.splitlines()
    ]
    row = next(t for t in listed if t["name"] == "leaked")
    assert set(row) == {"token_id", "name", "created_by", "created_at", "expires_at", "projects"}
    assert row["expires_at"] == ""  # (made without --expires by a token that never expires)
    text = stack.ak("auth", "list-tokens", check=True).stdout
    assert f'token_id:"{row["token_id"]}" name:"leaked"' in text and leaked not in text
    stack.ak("auth", "revoke-token", row["token_id"], check=True)
    status, reply = post(stack, "project.list", {}, mine)
    assert status == 401 and "invalid API token" in reply.error
    assert row["token_id"] not in stack.ak("auth", "list-tokens", check=True).stdout
    res = stack.ak("auth", "revoke-token", row["token_id"])
    assert res.returncode != 0 and "not found" in res.stderr
    # The last token is kept: revoking every other leaves the CLI's own.
    for t in map(json.loads, stack.ak("auth", "list-tokens", "-j", check=True).stdout.splitlines()):
        mine_id = json.loads(stack.ak("auth", "whoami", "-j", check=True).stdout)["token_id"]
        if t["token_id"] != mine_id:
            stack.ak("auth", "revoke-token", t["token_id"], check=True)
    res = stack.ak("auth", "revoke-token", mine_id)
    assert res.returncode != 0 and "is the last API token" in res.stderr, res.stderr
    assert post(stack, "project.list", {}, stack.auth())[0] == 200


def test_ak_up_says_when_the_cli_s_stored_token_is_refused(tmp_path: Path) -> None:
    """A revoked (or expired) token stored for the CLI is refused at every start: `ak up`
    says so and how to get back in, instead of leaving each `ak` command to get 401."""
    first = start_stack(tmp_path)
    try:
        stored = first.token
        spare = first.ak("auth", "create-token", "-n", "spare", check=True).stdout.strip()
        mine = json.loads(first.ak("auth", "whoami", "-j", check=True).stdout)["token_id"]
        res = subprocess.run(
            [AK, "auth", "revoke-token", mine],
            env={**first.env, "AK_TOKEN": spare},
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        assert "refused by this stack" not in first.output()
    finally:
        first.stop()
    # The same homes and URL: the CLI's stored token is the revoked one.
    same = {"AK_HTTP__ADDR": first.url.split("://")[1], "AK_HTTP__SERVICE_URL": first.url}
    again = start_stack(tmp_path, same)
    try:
        wait_until(lambda: "the CLI's token is refused" in again.output(), "ak up to say so")
        (line,) = [x for x in again.output().splitlines() if "the CLI's token is refused" in x]
        assert line.startswith("[ak] the CLI's token is refused by this stack (invalid API token)")
        assert "AK_TOKEN=akt_$(openssl rand -hex 32) ak up" in line
        assert stored not in again.output()
    finally:
        again.stop()


def test_a_token_made_to_expire_is_refused_once_it_has(stack: Stack) -> None:
    """`ak auth create-token --expires` bounds how long a token is taken, remembered by
    ingress or not; a token that expires makes none that outlive it."""
    short = stack.ak("auth", "create-token", "-n", "short", "--expires", "10s", check=True)
    as_short = {**stack.env, "AK_TOKEN": short.stdout.strip()}
    mine = {"Authorization": f"Bearer {short.stdout.strip()}"}
    assert post(stack, "project.list", {}, mine)[0] == 200  # taken, and remembered

    def ak(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AK, *args], env=as_short, capture_output=True, text=True)

    expires_at = json.loads(ak("auth", "whoami", "-j").stdout)["expires_at"]
    assert 0 < timefmt.parse_us(expires_at) - timefmt.now_us() <= 10_000_000, expires_at
    res = ak("auth", "create-token", "--expires", "1d")
    assert res.returncode == 40, res.stderr
    assert f"the token calling expires at {expires_at}, and the tokens it makes may not " in (
        res.stderr
    )
    child = ak("auth", "create-token", "-n", "child")  # as long as its maker, by default
    assert child.returncode == 0, child.stderr
    listed = stack.ak("auth", "list-tokens", "-j", check=True).stdout.splitlines()
    assert {t["name"]: t["expires_at"] for t in map(json.loads, listed)}["child"] == expires_at
    res = stack.ak("auth", "create-token", "--expires", "3w")
    assert (res.returncode, res.stderr.strip()) == (
        40,
        "Error: --expires: '3w' is not a duration: give a whole number and a unit, s, m, h "
        "or d (90m, 12h, 30d)",
    )
    wait_until(lambda: post(stack, "project.list", {}, mine)[0] == 401, "the token to expire")
    status, reply = post(stack, "project.list", {}, mine)
    assert reply.error.startswith(f"API token expired at {expires_at}: make a new one with ")
    res = subprocess.run(
        [AK, "project", "list"],
        env={**stack.env, "AK_TOKEN": child.stdout.strip()},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 41 and f"API token expired at {expires_at}" in res.stderr, res.stderr


def test_guessing_tokens_is_throttled_per_address(tmp_path: Path) -> None:
    """Failed token checks from one address have a budget (a burst, then a few a second):
    past it, requests are refused with 429 before the store is asked."""
    s = start_stack(tmp_path)
    try:
        bad = {"Authorization": "Bearer akt_" + "0" * 64}
        # (A header naming another client changes nothing without trusted proxies.)
        replies = until_throttled(
            lambda i: post(
                s, "project.list", {}, {**bad, "X-Forwarded-For": f"198.51.100.{i % 250}"}
            ),
            lambda reply: reply[0],
        )
        statuses = [status for status, _ in replies]
        assert statuses.count(401) >= 50 and set(statuses) == {401, 429}, statuses
        refused = [reply for status, reply in replies if status == 429]
        assert "too many requests with a missing or invalid API token" in refused[-1].error
        # The budget refills: the CLI's good token gets through again.
        wait_until(lambda: s.ak("project", "list").returncode == 0, "the CLI let in again", 20)
    finally:
        s.stop()


def test_behind_a_trusted_proxy_each_client_has_its_own_budget(tmp_path: Path) -> None:
    """With AK_HTTP__TRUSTED_PROXIES naming the proxy (here the test's own loopback), the
    address its X-Forwarded-For gives is the client: one client guessing tokens spends its
    own budget, not every client's; an address it writes itself, left of what the proxy
    adds, does not get it a new one; a webhook event's memo names it."""
    s = start_stack(tmp_path, {"AK_HTTP__TRUSTED_PROXIES": "127.0.0.1/32,::1"})
    try:
        bad = {"Authorization": "Bearer akt_" + "0" * 64}

        def guess(client: str) -> int:
            return post(s, "project.list", {}, {**bad, "X-Forwarded-For": client})[0]

        statuses = until_throttled(lambda _: guess("203.0.113.5"), int)
        assert statuses.count(401) >= 50 and set(statuses) == {401, 429}, statuses
        # Its own words, then the proxy's: the same budget, spent (it refills at 10 a second;
        # a fresh budget would take 50 at once).
        statuses = until_throttled(lambda _: guess("9.9.9.9, 203.0.113.5"), int)
        assert statuses.count(401) < 50 and 429 in statuses, statuses
        assert guess("203.0.113.6") == 401  # another client: its own budget
        assert s.ak("project", "list").returncode == 0  # the proxy's own address too
        manifest = MANIFEST.format(name="proxied")
        proj = write_project(tmp_path / "p", {"autokitteh.yaml": manifest, "h.py": CODE})
        hook = s.deploy_paths(proj)["hook"]
        status, head, _ = s.request("POST", hook, b"{}", {"X-Forwarded-For": "203.0.113.7"})
        assert status == 202
        shown = json.loads(s.ak("event", "get", head["autokitteh-event-id"], "-j").stdout)
        assert shown["memo"]["remote_addr"] == "203.0.113.7"
        if os.geteuid() == 0:  # (handlers run as worker user ids: the sandbox)
            _a_handler_is_no_proxy(s, tmp_path, hook)
    finally:
        s.stop()


FORGER = """import json
import urllib.error
import urllib.request


def forge(event):
    url, hook, victim = event.data["url"], event.data["hook"], event.data["victim"]
    request = urllib.request.Request(url + hook, b"{}", {"X-Forwarded-For": victim})
    with urllib.request.urlopen(request) as answer:
        print("event", answer.headers["AutoKitteh-Event-ID"])
    body = bytes([0x81, 0xA4]) + b"args" + bytes([0x80])  # msgpack {"args": {}}
    headers = {
        "Content-Type": "application/msgpack",
        "Authorization": "Bearer akt_" + "0" * 64,
        "X-Forwarded-For": victim,
    }
    statuses = []
    while 429 not in statuses and len(statuses) < 1000:  # (50 at once, then 10 a second)
        try:
            request = urllib.request.Request(url + "/api/project.list", body, headers)
            with urllib.request.urlopen(request) as answer:
                statuses.append(answer.status)
        except urllib.error.HTTPError as e:
            statuses.append(e.code)
    print("statuses", json.dumps(statuses))
"""


def _a_handler_is_no_proxy(s: Stack, tmp_path: Path, hook: str) -> None:
    """A handler reaches the stack's port on loopback, where the trusted proxy is: its
    connections (a worker user id's) are no proxy's, so what it writes in X-Forwarded-For
    neither names a webhook event's sender nor spends another client's budget."""
    victim = "203.0.113.50"
    proj = write_project(
        tmp_path / "forger",
        {"autokitteh.yaml": MANIFEST.format(name="forger"), "h.py": CODE + FORGER},
    )
    s.deploy(proj)
    inputs = {"url": s.url, "hook": hook, "victim": victim}
    args = [x for k, v in inputs.items() for x in ("-I", f"{k}={json.dumps(v)}")]
    res = s.ak("session", "start", "-o", "forger", "-p", "h.py:forge", *args, check=True)
    sid = res.stdout.strip().removeprefix("session_id: ")
    assert s.wait_session(sid, 60)["state"] == "COMPLETED"
    prints = dict(
        line.split(" ", 1) for line in s.ak("session", "prints", sid, "-n").stdout.splitlines()
    )
    shown = json.loads(s.ak("event", "get", prints["event"], "-j", check=True).stdout)
    assert shown["memo"]["remote_addr"] == "127.0.0.1"  # the handler's own address
    assert 429 in json.loads(prints["statuses"])  # its guesses spent its own budget...
    bad = {"Authorization": "Bearer akt_" + "0" * 64, "X-Forwarded-For": victim}
    assert post(s, "project.list", {}, bad)[0] == 401  # ...not the victim's


def test_webhooks_and_health_need_no_token(stack: Stack) -> None:
    assert stack.request("GET", "/healthz")[0] == 200
    assert stack.request("GET", "/readyz")[0] == 200
    hooks = stack.ak("trigger", "list", "-p", "beta", "-j", check=True).stdout
    slug = json.loads(hooks.splitlines()[0])["webhook_slug"]
    assert stack.request("POST", f"/webhooks/{slug}", b"{}")[0] == 202


async def test_ingress_refuses_tokens_off_on_an_address_others_reach() -> None:
    settings = Settings(nats_url="nats://127.0.0.1:1", http_addr="0.0.0.0:0", auth_tokens=False)
    with pytest.raises(AKError, match="API tokens are off .* which other machines can reach"):
        await run_ingress(settings)


CALL_API = """\
import urllib.error
import urllib.request


def call_api(event, forwarded_for=""):
    body = bytes([0x81, 0xA4]) + b"args" + bytes([0x80])  # msgpack {"args": {}}
    headers = {"Content-Type": "application/msgpack"}
    if forwarded_for:  # a proxy's header, naming another client
        headers["X-Forwarded-For"] = forwarded_for
    url = event.data["url"] + "/api/project.list"
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req) as r:
            print("status", r.status)
    except urllib.error.HTTPError as e:
        print("status", e.code, e.read().decode(errors="replace"))
"""
OTHER_USER = 65534  # nobody


def test_dev_mode_on_loopback_may_run_without_tokens(tmp_path: Path) -> None:
    s = start_stack(tmp_path, {"AK_AUTH__TOKENS": ""})
    try:
        assert "API tokens: OFF (dev mode on loopback" in s.output()
        status, reply = post(s, "project.list", {})
        assert status == 200 and reply.ok
        # Internal operations stay internal with tokens off.
        assert post(s, "session.env", {"project_id": "x"})[0] == 404
        # No token is minted while anything on the machine may ask (it would outlive "off").
        status, reply = post(s, "auth.create_token", {"name": "handler"})
        assert not reply.ok and "API tokens are off on this server" in reply.error, reply
        # A web page whose name was rebound to 127.0.0.1 (DNS rebinding) names itself.
        status, reply = post(s, "project.list", {}, {"Host": "evil.example:9980"})
        assert status == 401 and "addressed to 'evil.example:9980'" in reply.error, reply
        # A page elsewhere posting to 127.0.0.1 (no preflight for text or a form) is refused.
        for page in (
            {"Origin": "https://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Content-Type": "text/plain"},
        ):
            status, reply = post(s, "project.list", {}, page)
            assert status == 401 and "API tokens are off on this server" in reply.error, page
        if os.geteuid() == 0:  # the sandbox: handlers run as users of their own
            _handlers_and_other_users_are_refused(s, tmp_path)
    finally:
        s.stop()


def _handlers_and_other_users_are_refused(s: Stack, tmp_path: Path) -> None:
    """Without tokens the API answers only the user running the server: not a handler
    (which would read every project's secrets) nor another account on the machine."""
    project = write_project(
        tmp_path / "caller",
        {"autokitteh.yaml": "version: v1\nproject:\n  name: caller\n", "c.py": CALL_API},
    )
    s.deploy(project)
    url = json.dumps(s.url)
    res = s.ak("session", "start", "-o", "caller", "-p", "c.py:call_api", "-I", f"url={url}")
    sid = res.stdout.strip().removeprefix("session_id: ")
    assert s.wait_session(sid)["state"] == "COMPLETED"
    prints = s.ak("session", "prints", sid, "-n", check=True).stdout
    assert "status 401" in prints and "answers only the user that runs it" in prints, prints

    python = os.path.realpath(sys._base_executable)  # stdlib only, reachable by anyone
    # The operator's own connection stays open (a UI tab polls), and the other user names
    # it in X-Forwarded-For: the server believes the socket, never the header.
    host, port = s.url.removeprefix("http://").split(":")
    operator = http.client.HTTPConnection(host, int(port))
    operator.request("GET", "/healthz")
    operator.getresponse().read()
    held = f"127.0.0.1:{operator.sock.getsockname()[1]}"
    event = f"type('E', (), {{'data': {{'url': {s.url!r}}}}})"
    try:
        for forged in ("", held):
            code = CALL_API + f"\ncall_api({event}, {forged!r})\n"
            other = subprocess.run(
                [python, "-I", "-c", code],
                user=OTHER_USER,
                group=OTHER_USER,
                capture_output=True,
                text=True,
                cwd="/",
            )
            assert "status 401" in other.stdout, (forged, other)
            assert "this call came from user id 65534" in other.stdout, other.stdout
    finally:
        operator.close()


def test_tokens_cannot_be_off_off_loopback_or_outside_dev_mode(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "AK_AUTH__TOKENS": "off"}
    for args in (["--http-addr", "0.0.0.0:0"], ["--mode", "default", "--http-addr", "127.0.0.1:0"]):
        env |= {"AK_NATS_URL": "nats://127.0.0.1:1", "AK_DB__DSN": "sqlite://"}
        res = subprocess.run([AK, "up", *args], env=env, capture_output=True, text=True)
        assert res.returncode != 0
        assert (
            "AK_AUTH__TOKENS=off is refused: API tokens may be off only with --mode dev on a "
            "loopback address" in res.stderr
        )


@pytest.mark.parametrize(
    "name", ["../x.py", "/etc/cron.d/x", "a/../../x.py", "a\x00b.py", "..\\..\\x.py"]
)
def test_build_create_refuses_file_names_that_would_escape(stack: Stack, name: str) -> None:
    """The runner never wrote them, but `ak build download` and `ak project export` wrote
    them into archives as given."""
    before = stack.ak("build", "list", "-p", "alpha", check=True).stdout
    args = {"project": "alpha", "files": {"h.py": CODE.encode(), name: b"x"}}
    status, reply = post(stack, "build.create", args, stack.auth())
    # (a NUL is refused in any text of a request, before the build's rules are looked at)
    refusal = "build.create: field 'files' holds a NUL" if "\x00" in name else "invalid build: "
    assert status == 400 and reply.error.startswith(refusal)
    assert stack.ak("build", "list", "-p", "alpha", check=True).stdout == before


def test_build_create_refuses_more_files_than_the_limit(stack: Stack) -> None:
    """200,000 one-byte files filled a runner's disk with 787 MB (4 KiB each)."""
    files = {f"d{i // 1000}/{i}": b"x" for i in range(10_001)}
    status, reply = post(stack, "build.create", {"project": "alpha", "files": files}, stack.auth())
    assert status == 400 and reply.error.startswith("the build has 10,001 files, over the limit")


def test_names_are_plain_ascii_symbols_that_are_not_ids(stack: Stack) -> None:
    """A final newline, a Cyrillic look-alike of "alpha", 100,000 characters, or another
    project's id as a name were all accepted."""
    alpha_id = json.loads(stack.ak("project", "get", "alpha", "-j", check=True).stdout)
    bad = ["evil\n", "\u0430lpha", "x" * 100_000, f"prj_{alpha_id['project_id'][4:]}"]
    for name in bad:
        status, reply = post(stack, "project.create", {"name": name}, stack.auth())
        assert status == 400 and reply.error.startswith("parse project name: invalid name ")
        assert len(reply.error) < 300
        args = {"project": "alpha", "name": name, "value": "v"}
        status, reply = post(stack, "var.set", args, stack.auth())
        assert status == 400 and reply.error.startswith("invalid var name ")
        args = {"project": "alpha", "name": name, "integration": "http"}
        status, reply = post(stack, "connection.create", args, stack.auth())
        assert status == 400 and reply.error.startswith("invalid connection: name ")
    names = {p["name"] for p in stack.api("project.list")}
    assert not names & set(bad)


def test_a_manifest_alias_bomb_gets_a_short_answer(stack: Stack) -> None:
    """547 bytes of nested aliases made a 132 MB error message (a million strings here)."""
    lines = ["version: v1", "x0: &a0 [" + ",".join(["lollollol"] * 10) + "]"]
    lines += [f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]
    lines += ["project:", "  name: bomb", "  triggers:", "    - name: t", "      webhook: {}"]
    text = "\n".join([*lines, "      is_sync: *a5", ""])
    status, reply = post(stack, "manifest.plan", {"text": text}, stack.auth())
    assert status == 400 and len(reply.error) < 400
    assert "a manifest cannot use YAML aliases; write the value out in full" in reply.error
