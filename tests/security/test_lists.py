"""What a token limited to one project could grow without bound (a review of the lists,
2026-12-07): deployments, builds and connections by the ten thousand, a trigger's event
type or a project's display name of megabytes, var descriptions outside the vars' room, an
event of nearly the NATS message limit with its notes. Each made lists of every user (`ak
deployment|connection|trigger|project list`, the web UI's pages) or the event's own answers
fail over the NATS message limit. Reproduced by repro/unbounded_lists.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from akcore import wire

from tests.helpers import Stack, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: grow
  triggers:
    - name: hook
      call: h.py:on_event
      webhook: {}
"""
CODE = """\
def on_event(event):
    print("ran")
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lists")


@pytest.fixture(scope="module")
def stack(home: Path) -> Iterator[Stack]:
    s = start_stack(home)
    s.deploy(write_project(home / "grow", {"autokitteh.yaml": MANIFEST, "h.py": CODE}))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def token(stack: Stack) -> str:
    """A token limited to project "grow": all it makes here, it makes with this."""
    out = stack.ak("auth", "create-token", "-n", "grow", "-p", "grow", check=True).stdout
    return out.strip()


def post(stack: Stack, token: str, op: str, **args: Any) -> tuple[int, wire.StoreReply]:
    body = wire.encode(wire.StoreRequest(args=args))
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Bearer {token}"}
    status, _, raw = stack.request("POST", f"/api/{op}", body, headers)
    return status, wire.decode(wire.StoreReply, raw)


def made(stack: Stack, token: str, op: str, **args: Any) -> Any:
    status, reply = post(stack, token, op, **args)
    assert status == 200, (op, reply.error[:300])
    return reply.result


def ui(stack: Stack, path: str) -> int:
    return stack.request("GET", path, headers={"Cookie": f"ak_ui_token={stack.token}"})[0]


def test_a_project_keeps_its_newest_100_deployments(stack: Stack, token: str, home: Path) -> None:
    """Each `ak deploy` makes a build and a deployment; 40,000 deployments (or 17,000
    connections) made `ak deployment list` fail. Now the oldest inactive deployments, and
    their builds, go as new ones come; the active one stays, and deploying goes on."""
    (active,) = stack.api("deployment.list", project="grow")
    build = made(stack, token, "build.create", project="grow", files={"h.py": CODE.encode()})
    ours = [
        made(stack, token, "deployment.create", project="grow", build_id=build) for _ in range(104)
    ]
    listed = [d["deployment_id"] for d in stack.api("deployment.list", project="grow")]
    assert len(listed) == 100
    assert active["deployment_id"] in listed and active["state"] == "ACTIVE"
    assert set(ours[-99:]) <= set(listed) and not set(ours[:5]) & set(listed)
    builds = {b["build_id"] for b in stack.api("build.list", project="grow")}
    assert {active["build_id"], build} <= builds
    res, _ = stack.deploy(home / "grow")  # (a deploy still works, and prunes one more)
    assert len(stack.api("deployment.list", project="grow")) == 100
    status, headers, _ = stack.request("POST", f"/webhooks/{_slug(stack)}", b"{}")
    assert status == 202
    sid = stack.session_of("grow", headers["autokitteh-event-id"])
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    assert ui(stack, "/ui/projects") == 200


def test_a_project_keeps_its_newest_200_builds(stack: Stack, token: str) -> None:
    """Builds (up to 6 MiB each) made without deployments piled up in SQL for ever; now
    the oldest that no deployment uses go, those deployments use stay."""
    used = {d["build_id"] for d in stack.api("deployment.list", project="grow")}
    files = {"h.py": CODE.encode()}
    ours = [made(stack, token, "build.create", project="grow", files=files) for _ in range(201)]
    listed = {b["build_id"] for b in stack.api("build.list", project="grow")}
    assert len(listed) == 200
    assert used <= listed
    assert ours[-1] in listed and ours[0] not in listed


def test_a_project_has_at_most_500_connections(stack: Stack, token: str) -> None:
    """17,000 connections with long names made `ak connection list` and the web UI's
    Events page (of every project's users) fail over the NATS message limit."""
    for i in range(500):
        made(stack, token, "connection.create", project="grow", integration="http", name=f"c{i}")
    status, reply = post(
        stack, token, "connection.create", project="grow", integration="http", name="more"
    )
    assert status == 400 and 'project "grow" has 500 connections, the limit' in reply.error
    items = "".join(f"    - name: c{i}\n      integration: http\n" for i in range(501))
    status, reply = post(stack, token, "manifest.apply", text=MANIFEST + "  connections:\n" + items)
    assert status == 400
    assert "project.connections: 501 connections, over the limit of 500" in reply.error
    assert len(stack.api("connection.list")) == 500
    assert ui(stack, "/ui/events") == 200
    made(stack, token, "manifest.apply", text=MANIFEST)  # (deletes them)
    assert stack.api("connection.list") == []


@pytest.mark.parametrize("field", ["event_type", "call", "schedule"])
def test_a_triggers_text_is_bounded(stack: Stack, token: str, field: str) -> None:
    """Three triggers with a 3 MB event type made every list of triggers fail (and the
    web UI's Sessions, Events and Projects pages, for the users of every project)."""
    values = {"event_type": "e" * 1025, "call": "a" * 1020 + ".py:f", "schedule": "@every " * 147}
    trigger: dict[str, Any] = {"name": "long", "call": "h.py:on_event", "webhook": {}}
    if field == "schedule":
        del trigger["webhook"]
    trigger[field] = values[field]
    status, reply = post(stack, token, "trigger.create", project="grow", trigger=trigger)
    assert status == 400, reply
    assert f"project.triggers[0].{field}: 1,02" in reply.error
    assert "over the limit of 1,024" in reply.error
    status, reply = post(
        stack, token, "trigger.create", project="grow",
        trigger={"name": "fits", "call": "h.py:on_event", "webhook": {}, "event_type": "e" * 1024},
    )  # fmt: skip
    assert status == 200, reply.error
    made(stack, token, "trigger.delete", project="grow", trigger="fits")


def test_a_display_name_is_bounded(stack: Stack, token: str) -> None:
    """A display name of 8 MiB less 2 KiB (a manifest of the token's own project) made
    every list of projects, so every page of the web UI, fail for the users who see it
    and another project."""
    long = "d" * 1025
    text = MANIFEST.replace("  name: grow\n", f"  name: grow\n  display_name: {long}\n")
    status, reply = post(stack, token, "manifest.apply", text=text)
    assert status == 400
    assert "project.display_name: 1,025 characters, over the limit of 1,024" in reply.error
    res = stack.ak("project", "create", "--name", "other", "--display-name", long)
    assert res.returncode != 0 and "over the limit of 1,024" in res.stderr
    assert [p["display_name"] for p in stack.api("project.list")] == [""]


def test_var_descriptions_count_in_the_projects_room(stack: Stack, token: str) -> None:
    """A var's description was outside the 4 MiB a project's vars may take: a few of 3 MB
    made `var.get` and the web UI's Projects page (of every project's users) fail."""
    big = "d" * (3 << 20)
    made(stack, token, "var.set", project="grow", name="D1", value="", description=big)
    status, reply = post(
        stack, token, "var.set", project="grow", name="D2", value="", description=big
    )
    assert status == 400 and "over the 4194304 they may take together" in reply.error
    assert ui(stack, "/ui/projects") == 200
    made(stack, token, "var.delete", project="grow", name="D1")


def test_an_event_near_the_message_limit_is_read_with_its_notes(stack: Stack, token: str) -> None:
    """An event of 8 MiB less 68 KiB on a connection of 499 triggers whose filters fail:
    with its 499 dispatch notes, `event.get` of it was over the NATS message limit (`ak
    event get`, `ak event redispatch`, `ak session restart` and its web UI page failed, for
    good). Now ingress keeps 64 KiB of room beside an event, and `event.get` gives its
    notes that fit 32 KiB, then how many more there are."""
    name = "t" * 120
    items = "".join(
        f"    - name: {name}{i:03}\n      call: h.py:on_event\n      connection: conn\n"
        "      filter: data.missing == 1\n"
        for i in range(499)  # (and the webhook's: 500)
    )
    text = MANIFEST.replace(
        "  triggers:\n", "  connections:\n    - name: conn\n      integration: http\n  triggers:\n"
    )
    made(stack, token, "manifest.apply", text=text + items)
    data = {"k": "v" * ((8 << 20) - (68 << 10))}
    event_id = made(stack, token, "event.dispatch", destination="grow/conn", data=data)["event_id"]
    stack.wait_until(lambda: _notes(stack, token, event_id), "the event's notes", timeout=60)
    for args in ({}, {"sealed": True}, {"reveal": True}):
        status, reply = post(stack, token, "event.get", event_id=event_id, **args)
        assert status == 200, (args, reply.error)
        notes = reply.result["notes"]
        assert 100 < len(notes) < 499, len(notes)
        assert notes[-1]["note"].startswith(f"{500 - len(notes)} more notes not shown")
    status, reply = post(
        stack, token, "event.dispatch", destination="grow/conn", data={"k": "v" * ((8 << 20) - 256)}
    )
    assert status == 400
    assert "over the NATS message limit less what its notes need" in reply.error
    got = json.loads(stack.ak("event", "get", event_id, "-j", check=True).stdout)
    assert got["event_id"] == event_id
    made(stack, token, "manifest.apply", text=MANIFEST)


def _notes(stack: Stack, token: str, event_id: str) -> bool:
    status, reply = post(stack, token, "event.get", event_id=event_id)
    assert status in (200, 404, 400), reply.error
    assert status != 400, reply.error  # (over the limit: what this test is about)
    return status == 200 and bool(reply.result["notes"])


def _slug(stack: Stack) -> str:
    (t,) = stack.api("trigger.list", project="grow")
    return str(t["webhook_slug"])


FAILING = """\
version: v1
project:
  name: failing
  triggers:
    - name: hook
      call: f.py:on_event
      webhook: {}
"""


def test_the_events_page_shows_every_events_sessions(stack: Stack, home: Path) -> None:
    """The web UI's Events page asked one page of its events' sessions (1,000, or 4 MiB):
    70 sessions that failed with a long error (32 KiB of it and of its traceback are
    kept) filled it past 60, and the events after showed "none", unsaid."""
    code = "def on_event(event):\n    raise RuntimeError('x' * 100_000)\n"
    _, path = stack.deploy(
        write_project(home / "failing", {"autokitteh.yaml": FAILING, "f.py": code})
    )
    events = {stack.post_json(path, {"i": i})[1] for i in range(70)}
    stack.wait_until(lambda: len(_failed(stack)) >= 70, "70 sessions in ERROR", timeout=240)
    status, _, body = stack.request(
        "GET", "/ui/events?project=failing", headers={"Cookie": f"ak_ui_token={stack.token}"}
    )
    assert status == 200
    rows = re.findall(r'<tr data-event="(evt_\w+)">(.*?)</tr>', body.decode(), re.S)
    assert {e for e, _ in rows} == events
    assert [e for e, row in rows if "/ui/sessions/ses_" not in row] == []


def _failed(stack: Stack) -> list[str]:
    """The sessions of project "failing" in ERROR, page by page."""
    found, token = [], ""
    while True:
        page = stack.api("session.list", project="failing", state="ERROR", page_token=token)
        found += [s["session_id"] for s in page["sessions"]]
        if not (token := page["next_page_token"]):
            return found
