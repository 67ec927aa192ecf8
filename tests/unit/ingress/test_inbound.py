"""The GitHub and Slack routes driven directly, the store and JetStream played by the test:
odd payloads are refused (never a 500), a redelivery completes what a failed publish left
out, and a big delivery is not copied into every slash command's event."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from ak_ingress import github as gh_route
from ak_ingress import slack as slack_route
from ak_ingress.throttle import FailedTries, Refusals
from akcore import ids, wire
from akcore.errors import NotFound, ResourceExhausted
from starlette.requests import Request
from starlette.responses import Response


def request(path: str, headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": raw,
    }
    return Request(scope)


async def _refuse(*_: Any, **__: Any) -> Any:
    return {"status": 403, "error": "bad signature", "targets": []}


ODD_EVENTS = [
    {"event": {"type": "message", "message": "x"}, "authorizations": [{"user_id": "U"}]},
    {"event": {"type": "channel_created", "channel": "C1"}, "authorizations": [{"user_id": "U"}]},
    {"event": {"type": "message", "user": "U"}, "authorizations": 5},
    {"event": {"type": "message", "user": ["U"]}, "authorizations": [{"user_id": "U"}]},
    {"event": {"type": "message", "user": "U"}, "authorizations": [{"user_id": {"a": 1}}]},
    {"event": [], "team_id": 5},
    {"event": {"type": ["app_mention"]}},
]
ODD_INTERACTIONS = [
    {"type": "block_actions", "team": 5},
    {"type": "block_actions", "team": "T1"},
    {"type": "block_actions", "team": {"id": "T1"}, "is_enterprise_install": True, "user": "U"},
    {"type": "block_actions", "is_enterprise_install": True, "user": {"enterprise_user": "E"}},
]


def _slack(kind: str, body: bytes, content_type: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(slack_route.bus, "store_call", _refuse)
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(int(time.time())),
        "X-Slack-Signature": "v0=00",
    }

    async def publish(event: wire.Event, what: str) -> Response | None:
        raise AssertionError("nothing may be published")

    req = request(f"/slack/{kind}", headers)
    refusals = Refusals(FailedTries("x"), "192.0.2.1")
    resp = asyncio.run(slack_route.receive(None, req, body, kind, publish, refusals))  # type: ignore[arg-type]
    return resp.status_code


@pytest.mark.parametrize("envelope", ODD_EVENTS)
def test_odd_slack_events_are_refused_not_a_crash(
    envelope: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    status = _slack("event", json.dumps(envelope).encode(), "application/json", monkeypatch)
    assert status in (400, 403, 501)


@pytest.mark.parametrize("payload", ODD_INTERACTIONS)
def test_odd_slack_interactions_are_refused_not_a_crash(
    payload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.parse import urlencode

    body = urlencode({"payload": json.dumps(payload)}).encode()
    assert _slack("interaction", body, "application/x-www-form-urlencoded", monkeypatch) == 403


def test_a_form_with_too_many_fields_is_400(monkeypatch: pytest.MonkeyPatch) -> None:
    body = "&".join(f"f{i}=x" for i in range(1000)).encode()
    assert _slack("command", body, "application/x-www-form-urlencoded", monkeypatch) == 400


def _github_delivery(
    text: str,
    publish: Any,
    store_call: Any,
    mp: pytest.MonkeyPatch,
    key: str = "k",
    refusals: Refusals | None = None,
    payload: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    mp.setattr(gh_route.bus, "store_call", store_call)
    body = json.dumps(payload or {"action": "created", "comment": {"body": text}}).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "issue_comment",
        "X-GitHub-Delivery": "d-1",
        "X-Hub-Signature-256": "sha256=00",
        **(headers or {}),
    }
    req = request(f"/github/webhook/{key}", headers)
    refusals = refusals or Refusals(FailedTries("x"), "192.0.2.1")
    resp = asyncio.run(gh_route.deliver(None, req, body, key, publish, refusals))  # type: ignore[arg-type]
    return resp.status_code


async def _no_publish(event: wire.Event, what: str) -> Response | None:
    raise AssertionError("nothing may be published")


def test_refusals_are_counted_per_address_and_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """GitHub sends every customer's deliveries from a few addresses: one connection's
    refused deliveries (someone guessing its secret) slow down only that connection's from
    that address; requests for no connection cost nothing."""
    tries = FailedTries("refused deliveries")
    tries.clock = lambda: 1000.0  # (no refill while it runs, however slow the machine)
    refusals = Refusals(tries, "192.0.2.1")

    async def store_call(nc: Any, op: str, args: dict[str, Any], **_: Any) -> Any:
        if args.get("key") == "guessed":
            return {"status": 400, "error": "bad signature", "targets": []}
        return {"status": 200, "targets": []}  # no connection is for it

    def send(key: str) -> int:
        return _github_delivery("x", _no_publish, store_call, monkeypatch, key, refusals)

    assert [send("nobody") for _ in range(100)] == [200] * 100
    assert [send("guessed") for _ in range(int(FailedTries.BURST))] == [400] * 50
    with pytest.raises(ResourceExhausted, match="too many refused deliveries"):
        send("guessed")
    assert send("other") == 200
    # A repository's own webhook pointed at the app's route: for no one, never counted,
    # and the store is not asked.
    hook, repo = {"X-GitHub-Hook-Installation-Target-ID": "99"}, {"repository": {"id": 99}}
    for _ in range(100):
        status = _github_delivery("x", _no_publish, _refuse, monkeypatch, "", refusals, repo, hook)
        assert status == 200


def test_a_redelivery_publishes_what_a_failed_publish_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first_id = ids.new_id("evt")
    stored: set[str] = set()  # what JetStream (then the store) holds
    claims = {"n": 0}

    async def store_call(nc: Any, op: str, args: dict[str, Any], **_: Any) -> Any:
        if op == "event.get":
            if args["event_id"] not in stored:
                raise NotFound("no such event")
            return {"event_id": args["event_id"]}
        claims["n"] += 1
        target = {"connection_id": "con_x", "project_id": "prj_x", "event_id": first_id}
        return {"status": 200, "targets": [{**target, "new": claims["n"] == 1}]}

    room = {"n": 2}  # JetStream is full after the delivery's first two events
    published: list[wire.Event] = []

    async def publish(event: wire.Event, what: str) -> Response | None:
        if room["n"] == 0:
            return Response("Service Unavailable\n", status_code=503)
        room["n"] -= 1
        stored.add(event.event_id)
        published.append(event)
        return None

    text = "\n".join(f"/cmd{i} a" for i in range(4))  # the comment and 4 commands: 5 events
    assert _github_delivery(text, publish, store_call, monkeypatch) == 503  # sent again
    room["n"] = 100
    assert _github_delivery(text, publish, store_call, monkeypatch) == 200
    assert len(stored) == 5  # none lost; none published twice
    assert len(published) == 5
    assert published[-1].memo["redelivered"] == "true"  # the dispatcher checks its sessions


def test_slash_commands_do_not_copy_a_big_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    first_id = ids.new_id("evt")

    async def store_call(nc: Any, op: str, args: dict[str, Any], **_: Any) -> Any:
        target = {"connection_id": "con_x", "project_id": "prj_x", "event_id": first_id}
        return {"status": 200, "targets": [{**target, "new": True}]}

    sizes: list[int] = []

    async def publish(event: wire.Event, what: str) -> Response | None:
        sizes.append(len(wire.encode(event)))
        return None

    text = "\n".join(["/deploy " + "x" * 5000] * 16 + ["y" * 90_000])
    assert _github_delivery(text, publish, store_call, monkeypatch) == 200
    assert len(sizes) == 17
    assert sum(sizes[1:]) < sizes[0]  # the commands carry a reference, not 16 copies
