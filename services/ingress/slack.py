"""Slack's requests to a project's Slack connection, as AutoKitteh's Slack integration serves
them: ``POST /slack/event`` (Events API), ``/slack/command`` (slash commands) and
``/slack/interaction`` (Block Kit interactions).

Each is signed (Slack's v0 scheme, within five minutes): the store checks the signature
with the connection's signing secret (it never leaves the store). An Events API callback
Slack sends again (``X-Slack-Retry-Num``, the same ``event_id``) starts nothing new, nor
does a signed request sent again as it was (a replay within the five minutes: the store
remembers a digest of what each signature covers). Refusals are counted per address and
connection (``Refusals``). The
reply is sent once JetStream has the event; one that could not be stored gets 503.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from akcore import bus, ids, slack, timefmt, wire
from akcore.errors import AKError, InvalidArgument
from fastapi import Request, Response
from nats.aio.client import Client

from .github import Publish
from .throttle import Refusals

log = logging.getLogger(__name__)

# The content type each route takes, as AutoKitteh checks it (exactly).
CONTENT_TYPES = {
    "event": "application/json",
    "command": "application/x-www-form-urlencoded",
    "interaction": "application/x-www-form-urlencoded",
}


async def receive(
    nc: Client, request: Request, body: bytes, kind: str, publish: Publish, refusals: Refusals
) -> Response:
    headers = {k.lower(): v for k, v in request.headers.items()}
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != CONTENT_TYPES[kind]:
        return Response(f"Bad Request: Content-Type must be {CONTENT_TYPES[kind]}\n", 400)
    timestamp = headers.get("x-slack-request-timestamp", "")
    signature = headers.get("x-slack-signature", "")
    try:
        slack.check_timestamp(timestamp, time.time())
        if not signature:
            raise slack.RequestError(401, "missing X-Slack-Signature")
        parsed = slack.parse(kind, body)
        app_id, enterprise_id, team_id = slack.routing_ids(kind, parsed)
        event = _event(kind, parsed)
    except slack.RequestError as e:
        return Response(f"{e}\n", status_code=e.status)
    args: dict[str, Any] = {"body": body, "timestamp": timestamp, "signature": signature}
    if event is not None and event[0] == "url_verification":
        return await _verify_url(nc, args, event[1], refusals)
    args.update(app_id=app_id[:200], enterprise_id=enterprise_id[:200], team_id=team_id[:200])
    route = f"slack {args['app_id']}/{args['enterprise_id']}/{args['team_id']}"
    if kind == "event" and event is not None:
        args["delivery"] = str(event[1].get("__event_id", ""))[:200]
    refusals.check(route)
    try:
        routed = await bus.store_call(nc, "slack.route", args)
    except InvalidArgument as e:  # a field no text may hold (a NUL character)
        return Response(f"Bad Request: {e.message}\n", status_code=400)
    except AKError as e:
        log.warning("slack request: the store did not route it: %s", e)
        return Response("Service Unavailable\n", status_code=503, headers={"Retry-After": "10"})
    if routed["status"] != 200:  # the connection it names refused its signature
        refusals.failed(route)
        return Response(f"{routed.get('error', 'refused')}\n", status_code=routed["status"])
    if event is None:  # the app's own event, or Slack's SSL check: nothing to start
        return Response(status_code=200)
    event_type, data = event[0], {k: v for k, v in event[1].items() if k != "__event_id"}
    for target in routed["targets"]:
        if not target["new"] and target.get("stored"):
            continue  # Slack's retry of an event already stored (one event per request)
        ev = wire.Event(
            event_id=target["event_id"],
            project_id=target["project_id"],
            destination_id=target["connection_id"],
            event_type=event_type,
            data=data,
            memo={
                "integration": "slack",
                "delivery": args.get("delivery", ""),
                **({} if target["new"] else {"redelivered": "true"}),
            },
            created_at_us=ids.time_ms(target["event_id"]) * 1000 or timefmt.now_us(),
        )
        if (failed := await publish(ev, f"slack {target['connection_id']}")) is not None:
            return failed
    if kind == "command":
        reply = json.dumps(slack.command_reply(data))
        return Response(reply, media_type="application/json; charset=utf-8")
    return Response(status_code=200)


def _event(kind: str, parsed: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(event type, data) of the request; None when there is nothing to dispatch."""
    if kind == "command":
        if parsed.get("ssl_check"):
            return None
        return "slash_command", slack.command_data(parsed)
    if kind == "interaction":
        return "interaction", parsed
    env = parsed
    if env.get("type") == "url_verification":
        return "url_verification", {"challenge": str(env.get("challenge", ""))}
    found = slack.event_of(env)
    if found is None:
        return None
    event_type, data = found
    return event_type, {**data, "__event_id": env.get("event_id", "")}


async def _verify_url(
    nc: Client, args: dict[str, Any], data: dict[str, Any], refusals: Refusals
) -> Response:
    """Slack's check of a new Request URL: the challenge echoed, when a Slack
    connection's signing secret (or the server's) signed it. Its refusals have their own
    budget: they name no connection."""
    refusals.check("slack url_verification")
    try:
        routed = await bus.store_call(nc, "slack.route", {**args, "any_connection": True})
    except InvalidArgument as e:  # a field no text may hold (a NUL character)
        return Response(f"Bad Request: {e.message}\n", status_code=400)
    except AKError:
        return Response("Service Unavailable\n", status_code=503)
    if routed["status"] != 200:
        refusals.failed("slack url_verification")
        return Response("bad signature\n", status_code=routed["status"])
    body = json.dumps({"challenge": data["challenge"]})
    return Response(body, media_type="application/json; charset=utf-8")
