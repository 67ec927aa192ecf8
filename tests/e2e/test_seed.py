"""The seed's first example ("py_simple"), verbatim, against a real `ak up --mode dev`."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from tests.helpers import Stack

PROJECT = Path(__file__).parent / "projects" / "py_simple"
TS = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC\] "


def test_py_simple_end_to_end(stack: Stack, tmp_path: Path) -> None:
    proj = tmp_path / "py_simple"
    shutil.copytree(PROJECT, proj)
    res, path = stack.deploy(proj)
    assert res.stdout.splitlines()[:3] == [
        '[plan] project "py_simple": not found, will create',
        '[plan] var "py_simple/USER": not found, will set',
        '[plan] trigger "py_simple:webhook/events": not found, will create',
    ]
    assert re.search(
        r'^\[exec\] create_project "py_simple": prj_[0-9a-z]{26} created$', res.stdout, re.M
    )
    assert re.search(
        r'^\[exec\] set_var "py_simple/USER": prj_[0-9a-z]{26} updated$', res.stdout, re.M
    )
    assert re.search(
        r'^\[exec\] create_trigger "py_simple:webhook/events": trg_[0-9a-z]{26} '
        r"created$",
        res.stdout,
        re.M,
    )
    assert re.fullmatch(
        r'\[!!!!\] trigger "events" created, webhook path is '
        r'"/webhooks/[0-9a-z]{26}"\n',
        res.stderr,
    )
    tail = res.stdout.splitlines()[-4:]
    assert re.fullmatch(r'\[plan\] project "(prj_\w{26})": found, id="\1"', tail[0])
    assert re.fullmatch(r'\[exec\] create_build: created "bld_\w{26}"', tail[1])
    assert re.fullmatch(r'\[exec\] create_deployment: created "dep_\w{26}"', tail[2])
    assert tail[3] == "[exec] activate_deployment: activated"

    status, headers, body = stack.request(
        "POST", path, b'{"user": "joe", "event": "login"}', {"Content-Type": "application/json"}
    )
    assert status == 202 and body == b""
    assert re.fullmatch(r"evt_[0-9a-z]{26}", headers["autokitteh-event-id"])

    session = stack.wait_session("py_simple")
    assert session["state"] == "COMPLETED"
    assert session["event_id"] == headers["autokitteh-event-id"]

    prints = stack.ak("session", "prints", "py_simple", check=True).stdout.splitlines()
    assert all(re.match(TS, line) for line in prints), prints
    texts = [re.sub(TS, "", line) for line in prints]
    assert texts[0] == f"INFO: simple: HOME: {os.environ['HOME']}"
    assert texts[1] == "INFO: simple: USER: Garfield"
    assert texts[2].startswith("INFO: simple: event: ")
    assert f"session_id='{session['session_id']}'" in texts[2]
    assert texts[3] == """BODY: b'{"user": "joe", "event": "login"}'"""
    assert texts[4] == "REQUEST: {'user': 'joe', 'event': 'login'}"
    assert len(texts) == 5

    bare = stack.ak("session", "prints", "py_simple", "-n", check=True).stdout.splitlines()
    assert bare == texts


def test_second_deploy_keeps_slug_and_one_active_deployment(stack: Stack, tmp_path: Path) -> None:
    proj = tmp_path / "again"
    shutil.copytree(PROJECT, proj)
    (proj / "autokitteh.yaml").write_text(
        (proj / "autokitteh.yaml").read_text().replace("py_simple", "again")
    )
    _, path = stack.deploy(proj)
    res, path2 = stack.deploy(proj)
    assert path2 == ""  # no trigger created the second time
    lines = res.stdout.splitlines()
    assert lines[0].startswith('[plan] project "again": found, id="prj_')
    assert lines[1:4] == [
        '[plan] project "again": no changes needed',
        '[plan] project "again": found 0 connections',
        '[plan] project "again": found 1 triggers',
    ]
    assert lines[4].startswith('[plan] trigger "again:webhook/events": found, id="trg_')
    assert lines[5] == '[plan] trigger "again:webhook/events": no changes needed'
    assert lines[6].startswith('[plan] project "again": found, id="prj_')
    assert res.stderr == ""
    trig = json.loads(stack.ak("trigger", "get", "events", "-p", "again", "-j", check=True).stdout)
    assert f"/webhooks/{trig['webhook_slug']}" == path
    deps = [
        json.loads(x)
        for x in stack.ak("deployment", "list", "-p", "again", "-j", check=True).stdout.splitlines()
    ]
    assert len(deps) == 2
    assert [d["state"] for d in deps].count("ACTIVE") == 1
    assert deps[0]["state"] == "ACTIVE"  # newest first: the second deployment is the live one
    status, _, _ = stack.request("POST", path, b"{}")
    assert status == 202
