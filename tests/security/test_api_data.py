"""What a token holder's data may do (an adversarial review of the HTTP edge, 2026-12-07):
hand-made events (`ak event dispatch|save`) and session inputs (`ak session start`) are any
msgpack value. Nested ~900 deep, they were accepted (200) and then overflowed the runner's
recursion (its session ended in ERROR with `the runner failed running this session:
RecursionError`, a traceback in the runner's log; `ak event get` crashed the CLI); with map
keys that are not text, or text mixed with numbers, their event's and session's pages in
the web UI answered 500 (a traceback in ingress's log)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from akcore import subjects, wire
from nats.aio.client import Client

from tests.helpers import Stack, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: deep
  triggers:
    - name: hook
      call: h.py:on_event
      webhook: {}
"""
CODE = """\
def on_event(event):
    print("ran", type(event.data).__name__)


def main(event):
    print("main ran")
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("data")
    s = start_stack(home)
    s.deploy(write_project(home / "deep", {"autokitteh.yaml": MANIFEST, "h.py": CODE}))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def trigger(stack: Stack) -> str:
    (t,) = stack.api("trigger.list", project="deep")
    return str(t["trigger_id"])


def post(stack: Stack, op: str, args: dict[str, Any]) -> tuple[int, wire.StoreReply]:
    return stack.api_reply(op, args)  # type: ignore[no-any-return]


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


def ui(stack: Stack, path: str) -> tuple[int, str]:
    status, _, body = stack.request("GET", path, headers={"Cookie": f"ak_ui_token={stack.token}"})
    return status, body.decode(errors="replace")


@pytest.mark.parametrize(
    ("op", "field"),
    [("event.dispatch", "data"), ("event.save", "data"), ("session.start", "inputs")],
)
def test_data_nested_too_deep_is_refused_before_anything_runs(
    stack: Stack, trigger: str, op: str, field: str
) -> None:
    events = stack.api("event.list", project="deep")
    sessions = stack.api("session.list", project="deep")["sessions"]
    for value in (nested(900), [[[[nested(200)]]]]):
        if op == "session.start":
            args = {"project": "deep", "entrypoint": "h.py:main", "inputs": {"x": value}}
        else:
            args = {"destination": trigger, "data": {"x": value}}
        status, reply = post(stack, op, args)
        assert status == 400, reply
        assert f"{op}: field {field!r} nests lists and maps more than 100 levels deep" in (
            reply.error
        )
    assert stack.api("event.list", project="deep") == events
    assert stack.api("session.list", project="deep")["sessions"] == sessions
    assert "RecursionError" not in stack.output()


def test_data_at_the_limit_still_runs(stack: Stack, trigger: str) -> None:
    status, reply = post(stack, "event.dispatch", {"destination": trigger, "data": nested(99)})
    assert status == 200, reply.error
    sid = stack.session_of("deep", reply.result["event_id"])
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    got = json.loads(stack.ak("event", "get", reply.result["event_id"], "-j", check=True).stdout)
    assert got["event_id"] == reply.result["event_id"]


def test_ui_shows_data_whose_keys_are_not_all_text(stack: Stack, trigger: str) -> None:
    data = {"mixed": {"a": 1, 1: "one", None: 0}, "raw": {b"\xffkey": b"v"}}
    status, reply = post(stack, "event.dispatch", {"destination": trigger, "data": data})
    assert status == 200, reply.error
    event_id = reply.result["event_id"]
    sid = stack.session_of("deep", event_id)
    stack.wait_session(sid)
    status, reply = post(
        stack, "session.start", {"project": "deep", "entrypoint": "h.py:main", "inputs": data}
    )
    assert status == 200, reply.error
    started = reply.result["session_id"]
    stack.wait_session(started)
    for path in (f"/ui/events/{event_id}", f"/ui/sessions/{sid}", f"/ui/sessions/{started}"):
        status, page = ui(stack, path)
        assert status == 200, (path, page[:300])
        assert "&#34;a&#34;: 1" in page and "&#34;1&#34;: &#34;one&#34;" in page, path
    assert "Exception in ASGI application" not in stack.output()


def test_a_trigger_holding_bytes_is_refused(stack: Stack) -> None:
    """A trigger is text, booleans and maps (``ak trigger create``); bytes (msgpack) got 500
    ``Object of type bytes is not JSON serializable``."""
    trigger = {"name": "t2", "call": "h.py:main", "webhook": {"x": b"\xff"}}
    status, reply = post(stack, "trigger.create", {"project": "deep", "trigger": trigger})
    assert status == 400, reply
    assert reply.error.startswith("invalid trigger: ") and "bytes" in reply.error
    assert [t["name"] for t in stack.api("trigger.list", project="deep")] == ["hook"]


def test_a_session_start_over_the_message_limit_is_refused_whole(stack: Stack) -> None:
    """Inputs or a memo that make the session's `created` record larger than a NATS
    message got 500 ``nats: maximum payload exceeded`` (a traceback in the runner's log),
    and its job went out alone: a runner retried it for two minutes."""
    big = "m" * (8 * 1024 * 1024 - 4096)  # (under the API's 8 MiB body limit)
    jobs_before = _jobs_published(stack)
    for field, value in (("memo", {"k": big}), ("inputs", {"k": big})):
        args = {"project": "deep", "entrypoint": "h.py:main", field: value}
        status, reply = post(stack, "session.start", args)
        assert status == 400, (field, status, reply.error[:300])
        assert "the session's inputs and memo are over the NATS message limit" in reply.error
    assert _jobs_published(stack) == jobs_before  # (the store answers once both went out)
    assert "maximum payload exceeded" not in stack.output()


def _jobs_published(stack: Stack) -> int:
    """How many jobs were ever published to AK_JOBS (its last sequence)."""

    async def last_seq(nc: Client) -> int:
        info = await nc.jetstream().stream_info(subjects.STREAM_JOBS)
        return int(info.state.last_seq)

    return stack.as_service("dispatcher", last_seq)


def test_big_memos_and_event_types_do_not_break_the_lists(stack: Stack, trigger: str) -> None:
    """Three sessions with 3 MB memos (or events with 3 MB types), made by a token limited
    to one project, made every session (event) list over the NATS message limit: `ak
    session list` and the UI's Sessions page failed for the users of every project."""
    token = stack.ak("auth", "create-token", "-n", "one", "-p", "deep", check=True).stdout
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Bearer {token.strip()}"}
    big = "m" * (3 * 1024 * 1024)
    made = set()
    for _ in range(3):
        args = {"project": "deep", "entrypoint": "h.py:main", "memo": {"k": big}}
        body = wire.encode(wire.StoreRequest(args=args))
        status, _, data = stack.request("POST", "/api/session.start", body, headers)
        assert status == 200, data[:300]
        made.add(wire.decode(wire.StoreReply, data).result["session_id"])
        args = {"destination": trigger, "event_type": "e" * (3 * 1024 * 1024)}
        body = wire.encode(wire.StoreRequest(args=args))
        assert stack.request("POST", "/api/event.save", body, headers)[0] == 200
    seen, token_ = set(), ""
    while True:  # every session, page by page
        page = stack.api("session.list", page_token=token_)
        seen |= {s["session_id"] for s in page["sessions"]}
        if not (token_ := page["next_page_token"]):
            break
    assert made <= seen
    assert stack.api("event.list")  # (the newest that fit)
    for path in ("/ui/sessions", "/ui/events"):
        assert ui(stack, path)[0] == 200, path


def test_a_projects_vars_are_bounded_together(stack: Stack, trigger: str) -> None:
    """Nine vars of 1 MiB (each within the var limit) made `session.env` and `var.get` over
    the NATS message limit: every session of the project failed, and the web UI's Projects
    page (which lists each project's vars) failed for the users of every project."""
    value = "v" * (1024 * 1024 - 256)
    refused = []
    for i in range(6):
        status, reply = post(
            stack, "var.set", {"project": "deep", "name": f"BIG{i}", "value": value}
        )
        if status != 200:
            refused.append(reply.error)
    assert len(refused) == 2, refused
    assert "over the 4194304 they may take together" in refused[0]
    assert ui(stack, "/ui/projects")[0] == 200
    status, headers, _ = stack.request("POST", f"/webhooks/{_slug(stack)}", b"{}")
    assert status == 202
    sid = stack.session_of("deep", headers["autokitteh-event-id"])
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    for i in range(6):
        stack.ak("var", "delete", f"BIG{i}", "-p", "deep")


def _slug(stack: Stack) -> str:
    (t,) = stack.api("trigger.list", project="deep")
    return str(t["webhook_slug"])


def test_a_project_has_at_most_500_triggers(stack: Stack) -> None:
    """2,200 triggers with 4 KB filters, made by a token limited to one project, made every
    list of triggers (the web UI's Projects, Sessions and Events pages, for the users of
    every project; that project's own deploys) fail over the NATS message limit."""
    flt = 'data.method == "' + "x" * 3900 + '"'
    head, _, _ = MANIFEST.partition("  triggers:")

    def manifest(n: int) -> str:
        items = "".join(
            f"    - name: t{i}\n      call: h.py:on_event\n      webhook: {{}}\n"
            f"      filter: '{flt}'\n"
            for i in range(n)
        )
        return head + "  triggers:\n" + items

    status, reply = post(stack, "manifest.apply", {"text": manifest(501)})
    assert status == 400 and "project.triggers: 501 triggers, over the limit of 500" in reply.error
    status, reply = post(stack, "manifest.apply", {"text": manifest(500)})
    assert status == 200, reply.error
    trigger = {"name": "one_more", "call": "h.py:on_event", "webhook": {}}
    status, reply = post(stack, "trigger.create", {"project": "deep", "trigger": trigger})
    assert status == 400 and 'project "deep" has 500 triggers, the limit' in reply.error
    assert len(stack.api("trigger.list")) == 500
    for path in ("/ui/projects", "/ui/sessions", "/ui/events"):
        assert ui(stack, path)[0] == 200, path
    assert post(stack, "manifest.apply", {"text": MANIFEST})[0] == 200
