"""Sync webhooks: the HTTP response comes from the first outcome of the event's sessions."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from akcore import subjects, wire
from fastapi import Response
from nats.aio.client import Client
from nats.aio.msg import Msg

TIMEOUT = float(os.environ.get("AK_WEBHOOKS__RESPONSE_TIMEOUT", "30"))


class SyncWait:
    """Listens for an event's dispatch report and outcomes; start it before publishing."""

    def __init__(self, nc: Client, event_id: str) -> None:
        self.nc, self.event_id = nc, event_id
        self.dispatched: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._subs: list[Any] = []

    async def __aenter__(self) -> SyncWait:
        async def on_dispatched(msg: Msg) -> None:
            if not self.dispatched.done():
                self.dispatched.set_result(wire.unpack(msg.data))

        async def on_outcome(msg: Msg) -> None:
            if not self.outcome.done():
                self.outcome.set_result(wire.unpack(msg.data).get("value"))

        self._subs = [
            await self.nc.subscribe(subjects.dispatched_subject(self.event_id), cb=on_dispatched),
            await self.nc.subscribe(subjects.outcome_subject(self.event_id), cb=on_outcome),
        ]
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    async def response(self) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        try:
            report = await asyncio.wait_for(asyncio.shield(self.dispatched), TIMEOUT)
        except TimeoutError:
            return Response("Gateway Timeout\n", status_code=504)
        if not report.get("sessions") and not report.get("signaled"):
            return Response(
                "No sessions were started or signaled for sync webhook\n", status_code=502
            )
        try:
            value = await asyncio.wait_for(self.outcome, max(0.0, deadline - loop.time()))
        except TimeoutError:
            return Response("Gateway Timeout\n", status_code=504)
        return outcome_response(value)


def outcome_response(value: Any) -> Response:
    """An ``http_outcome`` becomes that response; any other outcome is a JSON 200."""
    if not (isinstance(value, dict) and "status_code" in value):
        return Response(json.dumps(value) + "\n", status_code=200, media_type="application/json")
    headers = {str(k): str(v) for k, v in (value.get("headers") or {}).items()}
    status = int(value.get("status_code") or 200)
    if value.get("json") is not None:
        headers.setdefault("Content-Type", "application/json")
        return Response(json.dumps(value["json"]) + "\n", status_code=status, headers=headers)
    body = value.get("body")
    if body is None:
        content = b""
    elif isinstance(body, str):
        content = body.encode()
    else:
        content = (json.dumps(body) + "\n").encode()
    return Response(content, status_code=status, headers=headers)
