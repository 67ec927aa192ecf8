"""GitHub's webhook deliveries to the project connections they are for, as AutoKitteh's
GitHub integration serves them: ``POST /github/webhook/<key>`` (a connection's own webhook,
signed with its ``pat_secret``) and ``POST /github/webhook`` (a GitHub app's, signed with
the app's secret, routed by its installation).

The store checks the signature with the connections' secrets (they never leave it) and
remembers each delivery (by its id, and by a digest of its signed body: the id is not
signed): a redelivery, or a replay under a new id, starts nothing new. Refusals are counted
per address and connection (``Refusals``); a delivery no connection is for gets 200, as
AutoKitteh answers, and costs no one's budget. The reply is sent once
JetStream has every event of the delivery; a delivery that could not be stored gets 503,
so that GitHub delivers it again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from akcore import bus, github, ids, wire
from akcore.errors import AKError, InvalidArgument, NotFound
from fastapi import Request, Response
from nats.aio.client import Client

from .throttle import Refusals

log = logging.getLogger(__name__)

Publish = Callable[[wire.Event, str], Awaitable[Response | None]]


async def deliver(
    nc: Client, request: Request, body: bytes, key: str, publish: Publish, refusals: Refusals
) -> Response:
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        kind = github.event_type(headers)
        data = github.payload(body, headers.get("content-type", ""))
    except github.DeliveryError as e:
        return Response(f"Bad Request: {e}\n", status_code=400)
    installation = data.get("installation")
    args: dict[str, Any] = {
        "body": body,
        "signature": github.signature_of(headers),
        "delivery": headers.get("x-github-delivery", "")[:200],
    }
    if key:
        args["key"] = key
        route = f"github key {key[:200]}"
    else:
        target_id = headers.get("x-github-hook-installation-target-id", "")
        if not target_id:
            return Response("Bad Request: missing X-GitHub-Hook-Installation-Target-ID\n", 400)
        if not isinstance(installation, dict) or installation.get("id") is None:
            # A repository's or an organization's own webhook (someone pointed it here),
            # not an app's: no connection is for it, as for an unknown key.
            return Response(status_code=200)
        args["app_id"] = target_id[:200]
        args["installation_id"] = str(installation["id"])[:200]
        route = f"github app {args['app_id']}/{args['installation_id']}"
    refusals.check(route)
    try:
        routed = await bus.store_call(nc, "github.route", args)
    except InvalidArgument as e:  # a field no text may hold (a NUL character)
        return Response(f"Bad Request: {e.message}\n", status_code=400)
    except AKError as e:
        log.warning("github delivery: the store did not route it: %s", e)
        return Response("Service Unavailable\n", status_code=503, headers={"Retry-After": "10"})
    if routed["status"] != 200:  # the connections it names refused its signature
        refusals.failed(route)
        return Response(f"{routed.get('error', 'refused')}\n", status_code=routed["status"])
    for target in routed["targets"]:
        events = _events(kind, data, target, args["delivery"], len(body))
        if not target["new"]:  # a redelivery: publish again what the store never got
            events = [ev for ev in events if not await _stored(nc, ev.event_id)]
        for event in events:
            if (failed := await publish(event, f"github {target['connection_id']}")) is not None:
                return failed
    return Response(status_code=200)


async def _stored(nc: Client, event_id: str) -> bool:
    try:
        await bus.store_call(nc, "event.get", {"event_id": event_id, "sealed": True})
    except NotFound:
        return False
    return True


def _events(
    kind: str, data: dict[str, Any], target: dict[str, Any], delivery: str, size: int
) -> list[wire.Event]:
    """The delivery's events for one connection; their ids follow from the first one's,
    so that publishing them again (a redelivery the store never got) repeats the same. A
    redelivery's are marked: the dispatcher then checks which sessions exist already."""
    first = target["event_id"]
    ms = ids.time_ms(first)
    memo = {"integration": "github", "delivery": delivery}
    if not target["new"]:
        memo["redelivered"] = "true"
    out = []
    for i, (event_type, event_data) in enumerate(github.events(kind, data, size, first)):
        event_id = first if i == 0 else ids.derived_id("evt", ms, f"{first}:{i}")
        out.append(
            wire.Event(
                event_id=event_id,
                project_id=target["project_id"],
                destination_id=target["connection_id"],
                event_type=event_type,
                data=event_data,
                memo=memo,
                created_at_us=ms * 1000,
            )
        )
    return out
