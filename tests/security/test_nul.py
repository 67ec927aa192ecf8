"""A NUL character in text (an adversarial review of the HTTP edge, 2026-12-07). PostgreSQL
refuses it in any text it stores or compares, and an environment variable cannot hold it:

- with a token, a var's value or description, a token's name, a manifest's `"a\\0b"` got
  500 with the SQL statement and its parameters (the var's value) in the answer; a var
  with one (SQLite keeps it) ended every session of its project with the worker's
  `ValueError: embedded null byte` traceback; an event dispatched with one in its type was
  acknowledged, started its sessions, and was never kept in the events table (the store
  retried it five times, then set it aside);
- without one, `/webhooks/a%00b` (and a GitHub key or a Slack team id with one) got 503, the
  store logged a traceback for each, and ingress said the store was not answering.

Now the API refuses such text (400, naming the field), the manifest too (naming the key),
and the public routes answer 404 or 400. The database's errors never carry the values."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ak_store.db import open_engine
from akcore import wire
from sqlalchemy import text

from tests.helpers import Stack, start_stack, write_project
from tests.pg import fresh_database

MANIFEST = """\
version: v1
project:
  name: nul
  vars:
    - name: PLAIN
      value: fine
  triggers:
    - name: hook
      call: h.py:on_event
      webhook: {}
"""
CODE = """\
def on_event(event):
    print("ran")
"""
NUL = "a\x00b"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        s = start_stack(home)
        s.deploy(write_project(home / "p", {"autokitteh.yaml": MANIFEST, "h.py": CODE}))
        yield s
        s.stop()
        return
    with fresh_database() as dsn:
        s = start_stack(home, {"AK_DB__DSN": dsn})
        s.deploy(write_project(home / "p", {"autokitteh.yaml": MANIFEST, "h.py": CODE}))
        yield s
        s.stop()


def post(stack: Stack, op: str, args: dict[str, Any]) -> tuple[int, wire.StoreReply]:
    return stack.api_reply(op, args)  # type: ignore[no-any-return]


def test_text_with_a_nul_is_refused_naming_the_field(stack: Stack) -> None:
    (trigger,) = stack.api("trigger.list", project="nul")
    events = stack.api("event.list", project="nul")
    trg = trigger["trigger_id"]
    var: dict[str, Any] = {"project": "nul", "name": "V"}
    calls: list[tuple[str, dict[str, Any], str]] = [
        ("var.set", {**var, "value": NUL}, "value"),
        ("var.set", {**var, "value": "x", "description": NUL}, "description"),
        ("var.set", {**var, "value": NUL, "secret": True}, "value"),
        ("auth.create_token", {"name": NUL}, "name"),
        ("event.dispatch", {"destination": trg, "event_type": NUL}, "event_type"),
        ("event.save", {"destination": trg, "memo": {"k": NUL}}, "memo"),
        ("session.stop", {"session": "nul", "reason": NUL}, "reason"),
    ]  # fmt: skip
    for op, args, field in calls:
        status, reply = post(stack, op, args)
        assert status == 400, (op, reply)
        assert f"{op}: field {field!r} holds a NUL character (\\0)" in reply.error, reply.error
        assert "SQL" not in reply.error
    text_ = MANIFEST.replace("value: fine", 'value: "a\\0b"')
    status, reply = post(stack, "manifest.apply", {"text": text_})
    assert status == 400
    assert "project.vars[0].value: holds a NUL character (\\0)" in reply.error
    assert [v["value"] for v in stack.api("var.get", project="nul")] == ["fine"]
    assert stack.api("event.list", project="nul") == events
    # What stays: a session of the project runs (no var broke its environment).
    status, headers, _ = stack.request("POST", f"/webhooks/{trigger['webhook_slug']}", b"{}")
    assert status == 202
    sid = stack.session_of("nul", headers["autokitteh-event-id"])
    assert stack.wait_session(sid)["state"] == "COMPLETED"


def test_public_routes_answer_a_nul_as_not_found_or_bad_request(stack: Stack) -> None:
    now = str(int(time.time()))
    slack = json.dumps({"type": "event_callback", "api_app_id": NUL, "team_id": NUL,
                        "event": {"type": "message"}}).encode()  # fmt: skip
    github = json.dumps({"installation": {"id": NUL}}).encode()
    for method, path, body, headers, want in [
        ("POST", "/webhooks/abc%00def", b"{}", {}, 404),
        ("GET", "/webhooks/abc%00def/more", None, {}, 404),
        ("POST", "/github/webhook/key%00", b"{}",
         {"X-GitHub-Event": "push", "Content-Type": "application/json"}, 400),
        ("POST", "/github/webhook", github,
         {"X-GitHub-Event": "push", "Content-Type": "application/json",
          "X-GitHub-Hook-Installation-Target-ID": "5"}, 400),
        ("POST", "/slack/event", slack,
         {"Content-Type": "application/json", "X-Slack-Signature": "v0=00",
          "X-Slack-Request-Timestamp": now}, 400),
    ]:  # fmt: skip
        status, _, answer = stack.request(method, path, body, headers)
        assert status == want, (path, status, answer)
        assert b"SQL" not in answer and b"Traceback" not in answer
    out = stack.output()
    assert "store not answering webhook lookups" not in out
    assert "did not route it" not in out
    assert "failed\nTraceback" not in out and "DataError" not in out


def test_database_errors_carry_no_values(tmp_path: Path) -> None:
    """What a statement was given is left out of the errors the store logs and answers."""
    engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    marker = "value-never-in-an-error-3k9"
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)"))
        conn.execute(text("INSERT INTO t VALUES ('k', :v)"), {"v": marker})
    with pytest.raises(Exception) as caught, engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES ('k', :v)"), {"v": marker})
    assert "UNIQUE" in str(caught.value) and marker not in str(caught.value)
