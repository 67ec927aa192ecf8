"""The `ak` commands AutoKitteh users script against (issue 18), end to end on a real stack
with API tokens on: their output and exit codes."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import yaml

from tests.helpers import AK, Stack, write_project

MANIFEST = """\
version: v1
project:
  name: {name}
  vars:
    - name: GREETING
      value: hi
  connections:
    - name: api
      integration: http
      vars:
        - name: base_url
          value: https://example.com
    - name: spare
      integration: http
  triggers:
    - name: hook
      webhook: {{}}
      call: h.py:on_hook
    - name: from_api
      connection: api
      event_type: ping
      call: h.py:on_hook
"""

CODE = """\
import time


def on_hook(event):
    print("one")
    if event.data.get("slow"):
        time.sleep(120)
    print("two\\nthree")
"""


def _project(stack: Stack, tmp: Path, name: str, deploy: bool = True) -> tuple[Path, str]:
    """Writes (and deploys) the test project; returns its directory and webhook path."""
    root = write_project(tmp / name, {"autokitteh.yaml": MANIFEST.format(name=name), "h.py": CODE})
    path = stack.deploy(root)[1] if deploy else ""
    return root, path


def _jsons(text: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in text.splitlines()]


def test_ak_up_starts_without_warnings(stack: Stack) -> None:
    out = stack.output()
    assert "did not answer" not in out
    # The sandbox's note on the test's own directories is the only warning a start gives.
    warned = [x for x in out.splitlines() if "WARNING" in x and "ak_runner.sandbox" not in x]
    assert warned == []


def test_manifest_validate_plan_apply(stack: Stack, tmp_path: Path) -> None:
    root, _ = _project(stack, tmp_path, "man18", deploy=False)
    manifest = str(root / "autokitteh.yaml")
    ok = stack.ak("manifest", "validate", manifest)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    bad = write_project(tmp_path / "bad", {"m.yaml": "version: v1\nproject:\n  colour: red\n"})
    res = stack.ak("manifest", "validate", str(bad / "m.yaml"))
    assert res.returncode == 40
    assert res.stderr.startswith("Error: invalid YAML semantics:\n- project.colour")
    assert stack.ak("manifest", "validate", str(tmp_path / "none.yaml")).returncode == 44
    from_stdin = stack.ak("man", "validate", input=MANIFEST.format(name="x"))
    assert from_stdin.returncode == 0

    plan = stack.ak("manifest", "plan", manifest, check=True)
    assert plan.stdout.startswith('[plan] project "man18": not found, will create\n')
    actions = json.loads(plan.stdout[plan.stdout.index("\n[\n") + 1 :])
    assert actions[0] == {"type": "create_project", "action": {"key": "man18", "display_name": ""}}
    assert [a["type"] for a in actions].count("create_trigger") == 2
    quiet = stack.ak("manifest", "plan", manifest, "-q", "-j", check=True).stdout
    assert quiet.count("\n") == 1 and json.loads(quiet) == actions
    assert stack.ak("project", "get", "man18").returncode == 44  # planning changed nothing

    applied = stack.ak("manifest", "apply", manifest, check=True)
    assert re.search(r'\[exec\] create_project "man18": prj_\w{26} created', applied.stdout)
    assert re.search(r'\[exec\] create_connection "man18/api": con_\w{26} created', applied.stdout)
    assert '[!!!!] trigger "hook" created, webhook path is "/webhooks/' in applied.stderr
    assert "create_build" not in applied.stdout  # no build, no deployment
    assert stack.ak("deployment", "list", "-p", "man18", check=True).stdout == ""
    again = stack.ak("manifest", "plan", manifest, "-j", check=True).stdout.splitlines()
    assert '[plan] project "man18": no changes needed' in again and again[-1] == "[]"
    scratch = stack.ak("manifest", "plan", manifest, "--from-scratch", "-q", check=True)
    assert json.loads(scratch.stdout)[0]["type"] == "create_project"


def test_project_create_lint_export_download_delete(stack: Stack, tmp_path: Path) -> None:
    made = stack.ak("project", "create", "-n", "empty18", check=True).stdout
    assert re.fullmatch(r"project_id: prj_\w{26}\n", made)
    assert stack.ak("project", "create", "-n", "empty18").returncode == 42
    assert stack.ak("project", "create", "-n", "9bad").returncode == 40
    random = stack.ak("prj", "create", "-j", check=True).stdout
    assert json.loads(random)["project_id"].startswith("prj_")

    root, _ = _project(stack, tmp_path, "prj18")
    lint = stack.ak("project", "lint", "-m", str(root / "autokitteh.yaml"))
    assert (lint.returncode, lint.stdout) == (0, "")
    (root / "broken.py").write_text("def f(:\n")
    (root / "autokitteh.yaml").write_text(
        MANIFEST.format(name="prj18").replace("h.py:on_hook", "h.py:nope", 1)
        + "    - name: lost\n      webhook: {}\n      call: gone.py:f\n"
    )
    lint = stack.ak("project", "lint", "-m", str(root / "autokitteh.yaml"))
    assert lint.returncode == 1 and lint.stderr == "Error: lint errors\n"
    assert lint.stdout.splitlines() == [
        "broken.py:1 - ERROR - cannot parse: invalid syntax (broken.py, line 1)",
        'autokitteh.yaml:0 - ERROR - trigger "hook": function "nope" not found in "h.py"',
        'autokitteh.yaml:0 - ERROR - trigger "lost": file "gone.py" not found',
    ]
    as_json = stack.ak("project", "lint", "-m", str(root / "autokitteh.yaml"), "-j")
    assert _jsons(as_json.stdout)[2] == {
        "file": "autokitteh.yaml",
        "level": "ERROR",
        "line": 0,
        "message": 'trigger "lost": file "gone.py" not found',
    }

    out = tmp_path / "export.zip"
    stack.ak("project", "export", "prj18", "-o", str(out), check=True)
    z = zipfile.ZipFile(out)
    assert sorted(z.namelist()) == ["autokitteh.yaml", "h.py"]
    exported = yaml.safe_load(z.read("autokitteh.yaml"))
    assert exported["version"] == "v2"
    assert exported["project"]["connections"] == [
        {"name": "api", "integration": "http"},
        {"name": "spare", "integration": "http"},
    ]
    assert exported["project"]["vars"] == [{"name": "GREETING", "value": ""}]
    hook = next(t for t in exported["project"]["triggers"] if t["name"] == "hook")
    assert hook == {"name": "hook", "webhook": {}, "call": "h.py:on_hook", "is_durable": True}
    full = subprocess.run(  # to stdout, as bytes
        [AK, "project", "export", "prj18", "-c"], env=stack.env, capture_output=True, check=True
    )
    assert b"value: hi" in zipfile.ZipFile(io.BytesIO(full.stdout)).read("autokitteh.yaml")

    stack.ak("project", "download", "prj18", "-o", str(tmp_path / "dl"), check=True)
    assert (tmp_path / "dl" / "h.py").read_text() == CODE

    busy = stack.ak("project", "delete", "prj18")
    assert busy.returncode == 42 and "ACTIVE" in busy.stderr and "deactivate" in busy.stderr
    dep = _jsons(stack.ak("deployment", "list", "-p", "prj18", "-j", check=True).stdout)[0]
    stack.ak("deployment", "deactivate", dep["deployment_id"], check=True)
    gone = stack.ak("project", "delete", "prj18")
    assert (gone.returncode, gone.stdout) == (0, "")
    assert stack.ak("project", "get", "prj18").returncode == 44
    assert stack.ak("trigger", "list", "-p", "prj18").returncode == 44
    assert stack.ak("project", "delete", "prj18").returncode == 0  # silent without --fail
    assert stack.ak("project", "delete", "prj18", "--fail").returncode == 44


def test_builds_and_deployments(stack: Stack, tmp_path: Path) -> None:
    root, _ = _project(stack, tmp_path, "bld18")
    line = stack.ak("build", "list", "-p", "bld18", check=True).stdout
    bid = re.search(r'build_id:"(bld_\w{26})"', line).group(1)  # type: ignore[union-attr]
    assert 'project:"bld18"' in line and "files:1" in line
    assert stack.ak("build", "get", bid, check=True).stdout.startswith(f'build: build_id:"{bid}"')
    assert stack.ak("build", "get", "bld_00000000000000000000000000").stdout == ""
    assert stack.ak("build", "get", "bld_00000000000000000000000000", "-f").returncode == 44

    akb = tmp_path / "b.akb"
    stack.ak("build", "download", bid, "-o", str(akb), check=True)
    with tarfile.open(akb) as tar:
        assert tar.getnames() == ["version.txt", "info.json", "resources/h.py"]
        assert tar.extractfile("resources/h.py").read().decode() == CODE  # type: ignore[union-attr]
    used = stack.ak("build", "delete", bid)
    assert used.returncode == 42 and "used by deployment" in used.stderr

    old = _jsons(stack.ak("deployment", "list", "-p", "bld18", "-j", check=True).stdout)[0]
    made = stack.ak("deployment", "create", "-b", bid, "-e", "bld18", "-a", check=True).stdout
    new = re.fullmatch(r"deployment_id: (dep_\w{26})\n", made).group(1)  # type: ignore[union-attr]
    assert 'state:"ACTIVE"' in stack.ak("deployment", "get", new, check=True).stdout
    assert "INACTIVE" in stack.ak("deployment", "get", old["deployment_id"], check=True).stdout
    active = stack.ak("deployment", "delete", new)
    assert active.returncode == 42 and "only an INACTIVE deployment" in active.stderr
    assert stack.ak("deployment", "delete", old["deployment_id"]).returncode == 0
    assert stack.ak("deployment", "get", old["deployment_id"]).returncode == 44
    other = stack.ak("deployment", "create", "-b", "bld_00000000000000000000000000", "-e", "bld18")
    assert other.returncode == 44
    stack.ak("dep", "deactivate", new, check=True)
    stack.ak("deployment", "delete", new, check=True)
    assert stack.ak("build", "delete", bid).returncode == 0
    assert stack.ak("build", "list", "-p", "bld18").stdout == ""
    assert stack.ak("build", "list", "-p", "bld18", "--fail").returncode == 44


def _trigger_id(stack: Stack, project: str, name: str) -> str:
    t = json.loads(stack.ak("trigger", "get", name, "-p", project, "-j", check=True).stdout)
    return str(t["trigger_id"])


def test_sessions_watch_prints_log_download_delete(stack: Stack, tmp_path: Path) -> None:
    _, path = _project(stack, tmp_path, "ses18")
    assert stack.request("POST", path, b"{}")[0] == 202
    watched = stack.ak(
        "session", "watch", "ses18", "--wait-created", "-r", "^two", "-t", "30s", "-n"
    )
    assert watched.returncode == 0 and "Print: two\nthree" in watched.stdout
    stack.wait_session("ses18")
    assert stack.ak("session", "prints", "ses18", "-n", "-r", "one").stdout == "one\n"
    tailed = stack.ak("session", "prints", "ses18", "--tail", "-n", "-i", "50ms", check=True)
    assert tailed.stdout == "one\ntwo\nthree\n"
    last = stack.ak("session", "log", "ses18", "--page-size", "1", "-j", check=True)
    assert _jsons(last.stdout)[-1]["state"] == {"completed": {}}
    assert re.fullmatch(r"next-page-token: 1\n", last.stderr)
    first = stack.ak("session", "log", "ses18", "--page-size", "1", "-o", "asc", "-j").stdout
    assert _jsons(first)[0]["state"] == {"created": {}}

    out = tmp_path / "logs.txt"
    res = stack.ak("session", "download-logs", "ses18", "-o", str(out), check=True)
    assert res.stdout == f"Logs written to {out}\n"
    lines = out.read_text().splitlines()
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]:  one", lines[0])
    assert lines[1].endswith("]:  two") and lines[2] == " " * 24 + "three"
    default = stack.ak("session", "download-logs", "ses18", cwd=tmp_path, check=True).stdout
    assert re.fullmatch(r"Logs written to ses_\w{26}_\d{8}_\d{6}\.txt\n", default)

    # A slow session: a dispatched event to the webhook trigger with data slow=1.
    trg = _trigger_id(stack, "ses18", "hook")
    ev_file = tmp_path / "ev.json"
    ev_file.write_text(
        json.dumps(
            {"destination_id": trg, "event_type": "post", "data": {"x": {"string": {"v": "y"}}}}
        )
    )
    sent = stack.ak("event", "dispatch", "-f", str(ev_file), "-d", "slow=1", check=True).stdout
    eid = re.fullmatch(r"event_id: (evt_\w{26})\n", sent).group(1)  # type: ignore[union-attr]
    sid = stack.session_of("ses18", eid)
    timed = stack.ak("session", "watch", sid, "--end-print-re", "never", "--timeout", "1s", "-q")
    assert timed.returncode == 1 and "timed out after 1s" in timed.stderr
    running = stack.ak("session", "delete", sid)
    assert running.returncode == 42 and "only an ended session" in running.stderr
    stack.ak("session", "stop", sid, "--reason", "enough", check=True)
    stack.wait_session(sid)
    deleted = stack.ak("session", "delete", sid, check=True).stdout
    assert deleted.startswith(f'session: session_id:"{sid}"') and 'state:"STOPPED"' in deleted
    assert stack.ak("session", "get", sid).returncode == 44
    assert stack.ak("session", "delete", sid).returncode == 0
    assert stack.ak("session", "delete", sid, "--fail").returncode == 44
    # The event behind it stays.
    assert '"slow":"1"' in stack.ak("event", "get", eid, check=True).stdout


def test_events_dispatch_and_save(stack: Stack, tmp_path: Path) -> None:
    _project(stack, tmp_path, "evt18")
    saved = stack.ak("event", "save", "-c", "evt18/api", "-e", "ping", "-d", "a=1,b=2")
    eid = re.fullmatch(r"event_id: (evt_\w{26})\n", saved.stdout).group(1)  # type: ignore[union-attr]
    got = json.loads(stack.ak("event", "get", eid, "-j", check=True).stdout)
    assert got["event_type"] == "ping" and got["data"] == {"a": "1", "b": "2"}
    assert got["destination_id"].startswith("con_")
    assert stack.ak("session", "list", "-p", "evt18", check=True).stdout == ""  # only kept

    # To a connection: its trigger whose event_type matches starts a session.
    sent = stack.ak("event", "dispatch", "-c", "evt18/api", "-e", "ping", check=True).stdout
    eid = re.fullmatch(r"event_id: (evt_\w{26})\n", sent).group(1)  # type: ignore[union-attr]
    sid = stack.session_of("evt18", eid)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    assert stack.ak("session", "list", "-p", "evt18", check=True).stdout.count("\n") == 1

    trg = _trigger_id(stack, "evt18", "hook")
    ev_file = tmp_path / "ev.json"
    ev_file.write_text(json.dumps({"destination_id": trg, "memo": {"why": "test"}}))
    sent = stack.ak("evt", "dispatch", "--from_file", str(ev_file), "-j", check=True).stdout
    sid = stack.session_of("evt18", json.loads(sent)["event_id"])
    stack.wait_session(sid)
    assert stack.ak("session", "prints", sid, "-n", check=True).stdout == "one\ntwo\nthree\n"

    nowhere = stack.ak("event", "dispatch", "-e", "x")
    assert nowhere.returncode == 40 and "no destination" in nowhere.stderr
    unknown = stack.ak("event", "save", "-c", "evt18/nope")
    assert unknown.returncode == 44


def test_connections_and_integrations(stack: Stack, tmp_path: Path) -> None:
    _project(stack, tmp_path, "con18")
    listed = stack.ak("connection", "list", "-p", "con18", check=True).stdout.splitlines()
    assert len(listed) == 2
    assert 'name:"api"' in listed[0] and 'integration_id:"int_3kth00http' in listed[0]
    got = stack.ak("connection", "get", "con18/api", "-j", check=True).stdout
    conn = json.loads(got)
    assert conn["name"] == "api" and conn["status"] == {"code": "CODE_OK", "message": "OK"}
    by_id = stack.ak("con", "get", conn["connection_id"], check=True).stdout
    assert by_id.startswith(f'connection: connection_id:"{conn["connection_id"]}"')
    bare = stack.ak("connection", "get", "api")
    assert bare.returncode == 40
    assert bare.stderr == 'Error: invalid connection name "api": missing project prefix\n'
    assert stack.ak("connection", "get", "con18/zzz").stdout == ""
    assert stack.ak("connection", "get", "con18/zzz", "--fail").returncode == 44
    tested = stack.ak("connection", "test", "con18/api", check=True)
    assert tested.stdout == 'status: code:CODE_OK message:"OK"\n'

    used = stack.ak("connection", "delete", "con18/api")
    assert used.returncode == 42
    assert "cannot delete a connection that has associated triggers" in used.stderr
    stack.ak("connection", "delete", "con18/spare", check=True)
    assert len(stack.ak("connection", "list", "-p", "con18").stdout.splitlines()) == 1
    only_http = stack.ak("connection", "list", "-i", "http", "-p", "con18", check=True)
    assert only_http.stdout.count("\n") == 1
    assert stack.ak("connection", "list", "-i", "slack", "-f").returncode == 44

    integrations = _jsons(stack.ak("integration", "list", "-j", check=True).stdout)
    assert [i["unique_name"] for i in integrations] == ["http", "github", "slack"]
    assert [i["integration_id"][:14] for i in integrations] == [
        "int_3kth00http",
        "int_3kthg1thvb",
        "int_3kth0s1ack",
    ]

    # A GitHub connection's status follows AutoKitteh's rules as its vars change.
    stack.ak("connection", "create", "gh", "-i", "github", "-p", "con18", check=True)
    got = json.loads(stack.ak("connection", "get", "con18/gh", "-j", check=True).stdout)
    assert got["status"] == {"code": "CODE_INIT_REQUIRED", "message": "Init required"}
    for name, value in (("auth_type", "pat"), ("pat", "ghp_x"), ("pat_secret", "s")):
        stack.ak("var", "set", "-s", "-c", "con18/gh", name, value, check=True)
    tested = json.loads(stack.ak("connection", "test", "con18/gh", "-j", check=True).stdout)
    assert tested == {"status": {"code": "CODE_OK", "message": "Using PAT + webhook"}}


def test_config_version_and_completion(stack: Stack, tmp_path: Path) -> None:
    keys = stack.ak("config", "list", check=True).stdout.splitlines()
    assert "http.service_url" in keys and keys == sorted(keys)
    envs = stack.ak("cfg", "list", "-e", check=True).stdout.splitlines()
    assert "AK_HTTP__SERVICE_URL" in envs
    bad = stack.ak("config", "set", "no.such", "x")
    assert bad.returncode == 40 and 'key "no.such" is not a valid configuration' in bad.stderr

    # A CLI with no AK_HTTP__SERVICE_URL finds the server through config.yaml.
    env = {k: v for k, v in stack.env.items() if k != "AK_HTTP__SERVICE_URL"}
    env["AK_TOKEN"] = stack.token

    def ak(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AK, *args], env=env, capture_output=True, text=True, timeout=60)

    assert ak("config", "set", "http.service_url", stack.url).returncode == 0
    cfg = Path(env["XDG_CONFIG_HOME"]) / "autokitteh" / "config.yaml"
    assert yaml.safe_load(cfg.read_text()) == {"http": {"service_url": stack.url}}
    assert ak("project", "list").returncode == 0

    version = stack.ak("version", check=True).stdout
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\n", version)
    assert json.loads(stack.ak("v", "-j", check=True).stdout)["version"] == version.strip()
    script = stack.ak("completion", "bash", check=True).stdout
    assert "_AK_COMPLETE" in script and "complete " in script
    assert stack.ak("completion", "tcsh").returncode == 40


def test_deploys_by_other_names_and_build_files(stack: Stack, tmp_path: Path) -> None:
    root, _ = _project(stack, tmp_path, "dep18", deploy=False)
    manifest = str(root / "autokitteh.yaml")
    quiet = stack.ak("manifest", "deploy", manifest, "-q", check=True)
    assert quiet.stdout == "" and '[!!!!] trigger "hook" created' in quiet.stderr
    loud = stack.ak("manifest", "deploy", manifest, check=True).stdout
    assert '[plan] project "dep18": found' in loud and "[exec] create_build" in loud
    assert '[plan] project "dep18": found, id=' in loud.splitlines()[0]
    assert "activate_deployment: activated" in loud

    res = stack.ak("project", "deploy", "dep18", "-f", str(root / "h.py"), check=True).stdout
    bid, did = re.fullmatch(r"build_id: (bld_\w{26})\ndeployment_id: (dep_\w{26})\n", res).groups()  # type: ignore[union-attr]
    assert 'state:"ACTIVE"' in stack.ak("deployment", "get", did, check=True).stdout
    built = stack.ak("project", "build", "dep18", "-d", str(root), check=True).stdout
    assert re.fullmatch(r"build_id: bld_\w{26}\n", built)
    neither = stack.ak("project", "build", "dep18")
    assert neither.returncode == 1 and "[dir file]" in neither.stderr

    akb = tmp_path / "b.akb"
    stack.ak("build", "download", bid, "-o", str(akb), check=True)
    up = stack.ak("build", "upload", str(akb), "-p", "dep18", check=True).stdout
    copy = re.fullmatch(r"build_id: (bld_\w{26})\n", up).group(1)  # type: ignore[union-attr]
    described = json.loads(stack.ak("build", "describe", copy, "-j", check=True).stdout)
    assert described == {"build_id": copy, "files": {"h.py": len(CODE)}}
    (tmp_path / "junk.akb").write_bytes(b"not a tar")
    assert stack.ak("build", "upload", str(tmp_path / "junk.akb"), "-p", "dep18").returncode == 40


def test_connection_create_and_global_flags(stack: Stack, tmp_path: Path) -> None:
    stack.ak("project", "create", "-n", "cc18", check=True)
    made = stack.ak("connection", "create", "web", "-i", "http", "-p", "cc18", check=True)
    assert re.fullmatch(r"connection_id: con_\w{26}\n", made.stdout)
    assert stack.ak("connection", "create", "web", "-i", "http", "-p", "cc18").returncode == 42
    nope = stack.ak("connection", "create", "s", "-i", "nope", "-p", "cc18")
    assert nope.returncode == 44 and 'integration "nope" not found' in nope.stderr
    no_int = stack.ak("connection", "create", "x", "-p", "cc18")
    assert no_int.stderr == 'Error: required flag(s) "integration" not set\n'
    stack.ak("var", "set", "-c", "cc18/web", "base_url", "https://x", check=True)
    assert stack.ak("var", "get", "-c", "cc18/web", check=True).stdout == 'base_url="https://x"\n'

    # -C and --token, before the command as AutoKitteh's global flags.
    env = {k: v for k, v in stack.env.items() if k != "AK_HTTP__SERVICE_URL"}
    cmd = [AK, "-C", f"http.service_url={stack.url}", "--token", stack.token, "project", "get"]
    res = subprocess.run([*cmd, "cc18"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and 'name:"cc18"' in res.stdout
    bad = [AK, "-C", f"http.service_url={stack.url}", "--token", "nope", "project", "list"]
    res = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 41
