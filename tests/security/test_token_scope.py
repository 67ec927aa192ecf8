"""API tokens limited to projects (`ak auth create-token --project`): such a token acts on
its projects as any token does, and reaches nothing of another project through any field
of any operation, over the API, the CLI or the web UI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from akcore import ops, scope, wire

from tests.helpers import AK, Stack, start_stack, wait_until, write_project

MANIFEST = """\
version: v1
project:
  name: {name}
  vars:
    - name: SECRET_KEY
      value: {secret}
      secret: true
  connections:
    - name: gh
      integration: github
  triggers:
    - name: hook
      call: h.py:on_hook
      webhook: {{}}
"""
CODE = """\
def on_hook(event):
    print("hook ran")


def main(event):
    print("main ran")
"""
BETA_SECRET = "beta-secret-never-for-alpha-9q"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("scope")
    s = start_stack(home)
    for name, secret in (("alpha", "alpha-secret"), ("beta", BETA_SECRET)):
        files = {"autokitteh.yaml": MANIFEST.format(name=name, secret=secret), "h.py": CODE}
        project = write_project(home / name, files)
        path = s.deploy(project)[1]
        status, event_id = s.post_json(path, {"n": 1})
        assert status == 202
        s.sessions_of_events(name, {event_id})
    yield s
    s.stop()


def objects(stack: Stack, project: str) -> dict[str, str]:
    """The ids of one of each kind of object of ``project``."""
    (dep,) = [d for d in stack.api("deployment.list", project=project) if d["state"] == "ACTIVE"]
    (trg,) = stack.api("trigger.list", project=project)
    (con,) = stack.api("connection.list", project=project)
    ses = stack.api("session.list", project=project)["sessions"][-1]  # (the webhook's)
    (env,) = stack.api("env.list", project=project)
    return {
        "project": project,
        "project_id": dep["project_id"],
        "build": dep["build_id"],
        "deployment": dep["deployment_id"],
        "trigger": trg["trigger_id"],
        "connection": con["connection_id"],
        "session": ses["session_id"],
        "event": ses["event_id"],
        "env": env["env_id"],
    }


def limited(stack: Stack, *projects: str, name: str = "limited") -> str:
    flags = [x for p in projects for x in ("-p", p)]
    return stack.ak("auth", "create-token", "-n", name, *flags, check=True).stdout.strip()


def call(stack: Stack, token: str, op: str, args: dict[str, Any]) -> tuple[int, wire.StoreReply]:
    body = wire.encode(wire.StoreRequest(args=args))
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Bearer {token}"}
    status, _, data = stack.request("POST", f"/api/{op}", body, headers)
    return status, wire.decode(wire.StoreReply, data)


def as_token(stack: Stack, token: str, *args: str, cwd: Path | None = None) -> Any:
    env = {**stack.env, "AK_TOKEN": token}
    return subprocess.run([AK, *args], env=env, capture_output=True, text=True, cwd=cwd)


def reaching(b: dict[str, str], a: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Calls that each name one object of project ``b`` (the others, if any, ``a``'s)."""
    beta_text = MANIFEST.format(name="beta", secret="overwritten")
    alpha_text = MANIFEST.format(name="alpha", secret="alpha-secret")
    trigger = {"name": "t2", "call": "h.py:main", "webhook": {}}
    return [
        ("project.get", {"project": b["project"]}),
        ("project.get", {"project": b["project_id"]}),
        ("project.delete", {"project": b["project"]}),
        ("project.export", {"project": b["project"], "include_contents": True}),
        ("build.create", {"project": b["project"], "files": {"h.py": b"x = 1\n"}}),
        ("build.list", {"project": b["project"]}),
        ("build.describe", {"build_id": b["build"]}),
        ("build.download", {"build_id": b["build"], "project": a["project"]}),
        ("build.delete", {"build_id": b["build"]}),
        ("deployment.create", {"project": a["project"], "build_id": b["build"]}),
        ("deployment.create", {"project": b["project"], "build_id": a["build"]}),
        ("deployment.activate", {"deployment_id": b["deployment"]}),
        ("deployment.deactivate", {"deployment_id": b["deployment"]}),
        ("deployment.get", {"deployment_id": b["deployment"]}),
        ("deployment.list", {"project": b["project"]}),
        ("deployment.delete", {"deployment_id": b["deployment"]}),
        ("trigger.create", {"project": b["project"], "trigger": trigger}),
        ("trigger.delete", {"trigger": b["trigger"]}),
        ("trigger.get", {"trigger": "hook", "project": b["project"]}),
        ("trigger.list", {"project": b["project"]}),
        ("env.list", {"project": b["project"]}),
        ("var.set", {"project": b["project"], "name": "X", "value": "1"}),
        ("var.set", {"project": a["project"], "connection": "beta/gh", "name": "X", "value": "1"}),
        ("var.get", {"env": b["env"], "reveal": True}),
        ("var.get", {"env": "beta/default", "reveal": True}),
        ("var.get", {"connection": b["connection"], "reveal": True}),
        ("var.delete", {"project": b["project"], "name": "SECRET_KEY"}),
        ("session.list", {"project": b["project"]}),
        ("session.list", {"project": a["project"], "deployment": b["deployment"]}),
        ("session.list", {"event_id": b["event"]}),
        ("session.list", {"event_ids": [b["event"]]}),
        ("session.list", {"parent": b["session"]}),
        ("session.list", {"trigger": b["trigger"]}),
        ("session.get", {"session": b["session"]}),
        ("session.get", {"session": b["project"]}),
        ("session.records", {"session": b["session"]}),
        ("session.trace", {"session": b["session"]}),
        ("session.start", {"entrypoint": "h.py:main", "deployment_id": b["deployment"]}),
        ("session.start", {"entrypoint": "h.py:main", "project": b["project"]}),
        (
            "session.start",
            {"entrypoint": "h.py:main", "deployment_id": a["deployment"], "build_id": b["build"]},
        ),
        ("session.stop", {"session": b["session"]}),
        ("session.restart", {"session": b["session"]}),
        ("session.delete", {"session_id": b["session"]}),
        ("event.list", {"project": b["project"]}),
        ("event.list", {"trigger": b["trigger"]}),
        ("event.get", {"event_id": b["event"], "reveal": True}),
        ("event.redispatch", {"event_id": b["event"]}),
        ("event.dispatch", {"destination": b["trigger"], "data": {"n": 2}}),
        ("event.dispatch", {"destination": "beta/gh", "data": {"n": 2}}),
        ("event.save", {"destination": b["connection"]}),
        ("connection.create", {"project": b["project"], "name": "c2", "integration": "github"}),
        ("connection.list", {"project": b["project"]}),
        ("connection.get", {"connection": "beta/gh"}),
        ("connection.init", {"connection": b["connection"], "values": {"pat_key": "x"}}),
        ("connection.test", {"connection": b["connection"]}),
        ("connection.delete", {"connection": "beta/gh"}),
        ("manifest.plan", {"text": beta_text}),
        ("manifest.apply", {"text": beta_text}),
        ("manifest.apply", {"text": alpha_text, "project_name": b["project"]}),
        ("manifest.apply", {"text": MANIFEST.format(name="gamma", secret="x")}),
        ("project.create", {"name": "gamma"}),
        ("auth.list_tokens", {}),
        ("auth.revoke_token", {"token_id": "tok_0000000000000000000000000a"}),
        ("auth.create_token", {"projects": [b["project"]]}),
    ]


def state_of(stack: Stack, project: str) -> Any:
    """What a call that reached ``project`` could have changed or read."""
    return (
        stack.api("project.get", project=project),
        stack.api("var.get", project=project, reveal=True),
        stack.api("var.get", connection=f"{project}/gh", reveal=True),
        stack.api("deployment.list", project=project),
        stack.api("trigger.list", project=project),
        stack.api("connection.list", project=project),
        stack.api("build.list", project=project),
        stack.api("event.list", project=project),
        [
            {k: v for k, v in s.items() if k != "updated_at"}
            for s in stack.api("session.list", project=project)["sessions"]
        ],
    )


def test_the_sweep_tries_every_operation_and_kind_of_reference() -> None:
    """The sweep below names every public operation that points at a project (so one
    added later is tried too), and every kind of reference."""
    some = dict.fromkeys(("project", "project_id", "build", "deployment", "trigger"), "x")
    sweep = reaching(some | dict.fromkeys(("connection", "session", "event", "env"), "x"), some)
    pointing = {name for name, op in ops.OPS.items() if op.public and op.scope}
    assert pointing - {op for op, _ in sweep} == set()
    kinds = {scope.FIELDS[f] for _, args in sweep for f in args if f in scope.FIELDS}
    assert kinds == set(scope.KINDS)


def test_a_limited_token_reaches_nothing_of_another_project(stack: Stack) -> None:
    a, b = objects(stack, "alpha"), objects(stack, "beta")
    token = limited(stack, "alpha")
    before = state_of(stack, "beta")
    for op, args in reaching(b, a):
        status, reply = call(stack, token, op, args)
        assert status in (403, 404), f"{op} {args}: {status} {reply.result!r} {reply.error}"
        assert "API token" in reply.error and '"alpha"' in reply.error, (op, reply.error)
        assert BETA_SECRET not in reply.error and "beta-" not in reply.error
    assert state_of(stack, "beta") == before
    # Denied and missing look alike: a name that is no project's gets the same answer.
    status, reply = call(stack, token, "project.get", {"project": "no-such-project"})
    assert status == 404
    assert reply.error == (
        'project "no-such-project" not found in the projects this API token may act on '
        '(project "alpha"): it reaches nothing else; call with a token that is not limited '
        "to projects"
    )
    status, denied = call(stack, token, "project.get", {"project": "beta"})
    assert (status, denied.error) == (404, reply.error.replace("no-such-project", "beta"))


def test_a_limited_token_works_on_its_own_project(stack: Stack, tmp_path: Path) -> None:
    """Deploy, run, read, and every list narrowed to its project (`ak` without -p too)."""
    token = limited(stack, "alpha", name="alpha-ci")
    project = write_project(
        tmp_path / "alpha",
        {"autokitteh.yaml": MANIFEST.format(name="alpha", secret="rotated"), "h.py": CODE},
    )
    manifest = str(project / "autokitteh.yaml")
    res = as_token(stack, token, "manifest", "plan", manifest)
    assert res.returncode == 0 and "SECRET_KEY" in res.stdout, res.stderr
    res = as_token(stack, token, "deploy", "--manifest", manifest)
    assert res.returncode == 0, res.stderr
    started = as_token(
        stack, token, "session", "start", "--project", "alpha", "--entrypoint", "h.py:main"
    )
    assert started.returncode == 0, started.stderr
    session_id = started.stdout.split()[-1]
    wait_until(
        lambda: "main ran" in as_token(stack, token, "session", "prints", session_id).stdout,
        "the session started by the limited token to print",
    )
    for command in (
        ["project", "list"],
        ["session", "list"],
        ["event", "list"],
        ["deployment", "list"],
        ["trigger", "list"],
        ["connection", "list"],
        ["env", "list"],
    ):
        res = as_token(stack, token, *command, "-j")
        assert res.returncode == 0, (command, res.stderr)
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        assert rows, command
        assert not any("beta" in json.dumps(r) for r in rows), (command, res.stdout)
    assert '"name":"beta"' in stack.ak("project", "list", "-j", check=True).stdout
    res = as_token(stack, token, "var", "get", "SECRET_KEY", "-p", "alpha", "--reveal", "-j")
    assert json.loads(res.stdout)["value"] == "rotated", res.stderr
    who = json.loads(as_token(stack, token, "auth", "whoami", "-j").stdout)
    assert who["projects"] == ["alpha"] and who["name"] == "alpha-ci"
    full = json.loads(stack.ak("auth", "whoami", "-j", check=True).stdout)
    assert full["projects"] == []


def test_a_limited_token_makes_only_tokens_within_its_projects(stack: Stack) -> None:
    both = limited(stack, "alpha", "beta", name="both")
    child = as_token(stack, both, "auth", "create-token", "-n", "child")
    assert child.returncode == 0, child.stderr
    who = json.loads(as_token(stack, child.stdout.strip(), "auth", "whoami", "-j").stdout)
    assert sorted(who["projects"]) == ["alpha", "beta"]  # its maker's, by default
    narrower = as_token(stack, both, "auth", "create-token", "-n", "narrower", "-p", "beta")
    assert narrower.returncode == 0, narrower.stderr
    res = as_token(stack, narrower.stdout.strip(), "auth", "create-token", "-p", "alpha")
    assert res.returncode == 44 and 'project "alpha" not found in the projects' in res.stderr
    # Each lists both projects' sessions, one project's at a time too.
    listed = as_token(stack, both, "session", "list", "-j").stdout
    assert {json.loads(x)["project_id"] for x in listed.splitlines()} == {
        objects(stack, p)["project_id"] for p in ("alpha", "beta")
    }
    res = as_token(stack, both, "auth", "list-tokens")
    assert res.returncode == 43 and "may not list the API tokens" in res.stderr, res.stderr
    rows = [
        json.loads(x) for x in stack.ak("auth", "list-tokens", "-j", check=True).stdout.splitlines()
    ]
    assert {r["name"]: sorted(r["projects"]) for r in rows}["narrower"] == ["beta"]
    assert {r["name"]: r["projects"] for r in rows}["limited"] in (["alpha"], [])
    res = as_token(stack, stack.token, "auth", "create-token", "-p", "no-such-project")
    assert res.returncode == 44 and 'project "no-such-project" not found' in res.stderr


def test_a_limited_token_may_revoke_itself_only(stack: Stack) -> None:
    token = limited(stack, "alpha", name="short-lived")
    mine = json.loads(as_token(stack, token, "auth", "whoami", "-j").stdout)["token_id"]
    full = json.loads(stack.ak("auth", "whoami", "-j", check=True).stdout)["token_id"]
    res = as_token(stack, token, "auth", "revoke-token", full)
    assert res.returncode == 43 and f"may revoke only itself ({mine})" in res.stderr
    assert as_token(stack, token, "auth", "revoke-token", mine).returncode == 0
    assert as_token(stack, token, "project", "list").returncode == 41


def test_limited_tokens_do_not_count_as_the_last_way_in(stack: Stack) -> None:
    """An expiring token may not revoke the last token that never expires and reaches every
    project, even while tokens limited to projects that never expire are left."""
    limited(stack, "alpha", name="lasting-but-limited")
    expiring = stack.ak("auth", "create-token", "--expires", "1h", check=True).stdout.strip()
    full = json.loads(stack.ak("auth", "whoami", "-j", check=True).stdout)["token_id"]
    rows = [
        json.loads(x) for x in stack.ak("auth", "list-tokens", "-j", check=True).stdout.splitlines()
    ]
    for row in rows:  # (any other unlimited lasting token made by this module)
        if row["token_id"] != full and not row["projects"] and not row["expires_at"]:
            stack.ak("auth", "revoke-token", row["token_id"], check=True)
    res = as_token(stack, expiring, "auth", "revoke-token", full)
    assert res.returncode == 42, res.stderr
    assert "is the last API token that never expires and may act on every project" in res.stderr
    assert stack.ak("project", "list").returncode == 0


def test_the_web_ui_shows_a_limited_token_its_projects_only(stack: Stack) -> None:
    cookie = f"ak_ui_token={limited(stack, 'alpha', name='ui')}"  # (what the login page sets)
    pages = {}
    for path in ("/ui/projects", "/ui/sessions", "/ui/events"):
        status, _, body = stack.request("GET", path, headers={"Cookie": cookie})
        assert status == 200, (path, status)
        pages[path] = body.decode()
    assert "alpha" in pages["/ui/projects"]
    for path, page in pages.items():
        assert "beta" not in page, path
    b = objects(stack, "beta")
    status, _, body = stack.request(
        "GET", f"/ui/sessions/{b['session']}", headers={"Cookie": cookie}
    )
    assert status == 404 and b"beta" not in body


def test_a_routing_var_held_by_another_project_is_not_named(stack: Stack) -> None:
    """Routing vars (a GitHub installation, a webhook key) are unique across the server:
    claiming one another project's connection holds is refused without naming it."""
    beta = objects(stack, "beta")["connection"]
    stack.api("var.set", connection="beta/gh", name="pat_key", value="beta-hook-key-77")
    token = limited(stack, "alpha", name="router")
    args = {"connection": "alpha/gh", "name": "pat_key", "value": "beta-hook-key-77"}
    status, reply = call(stack, token, "var.set", args)
    assert status == 409
    assert reply.error == (
        "connection var pat_key='beta-hook-key-77' is already used by another connection "
        "(of another project); each routes its own deliveries: choose another value"
    )
    assert beta not in reply.error


def test_a_limited_token_may_not_route_an_installation_of_the_server_s_app(stack: Stack) -> None:
    """A GitHub or Slack installation of the server's own app is routed by a connection
    var; its deliveries are signed with the app's secret, which tells no project apart:
    whoever sets the var first gets them. A limited token may not set one, by any path."""
    token = limited(stack, "alpha", name="installer")
    text = MANIFEST.format(name="alpha", secret="alpha-secret").replace(
        "      integration: github\n",
        "      integration: github\n      vars:\n        - name: install_key__77__123\n"
        "          value: x\n",
    )
    for op, args in (
        ("var.set", {"connection": "alpha/gh", "name": "install_key__77__123", "value": "x"}),
        ("connection.init", {"connection": "alpha/gh", "values": {"install_ids": "A/E/T"}}),
        ("manifest.apply", {"text": text}),
    ):
        status, reply = call(stack, token, op, args)
        assert status == 403, (op, status, reply.error)
        assert "routes an installation of the server's GitHub or Slack app" in reply.error
    assert stack.api("var.get", connection="alpha/gh", names=[]) == []  # nothing was set
    # Its own webhook's key (checked with its own secret) it may set; an unlimited token
    # may route an installation.
    args = {"connection": "alpha/gh", "name": "pat_key", "value": "alpha-own-key-5"}
    assert call(stack, token, "var.set", args)[0] == 200
    stack.api("var.set", connection="alpha/gh", name="install_key__77__123", value="x")
