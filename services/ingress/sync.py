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


class SyncWaits:
    """The sync webhook requests of one ingress process waiting for their events' dispatch
    reports and outcomes: one subscription to each subject for all requests, made once.
    (Two subscriptions, a flush and two unsubscribes per request were a third of ingress's
    CPU per sync request.) With several ingress processes, each also hears the others'
    reports and outcomes and drops them unread."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._waits: dict[str, SyncWait] = {}
        self._subscribed: asyncio.Future[None] | None = None

    def wait(self, event_id: str) -> SyncWait:
        """Listens for ``event_id``'s report and outcomes; enter it before publishing."""
        return SyncWait(self, event_id)

    async def _ready(self) -> None:
        if self._subscribed is None or (
            self._subscribed.done() and self._subscribed.exception() is not None
        ):
            self._subscribed = asyncio.ensure_future(self._subscribe())
        await asyncio.shield(self._subscribed)

    async def _subscribe(self) -> None:
        subs = [
            await self.nc.subscribe(subjects.dispatched_subject("*"), cb=self._on_dispatched),
            await self.nc.subscribe(subjects.outcome_subject("*"), cb=self._on_outcome),
        ]
        try:
            await self.nc.flush()  # the server has them before any event is published
        except BaseException:
            for sub in subs:
                await sub.unsubscribe()
            raise

    def _waiting(self, msg: Msg) -> SyncWait | None:
        return self._waits.get(msg.subject.rpartition(".")[2])

    async def _on_dispatched(self, msg: Msg) -> None:
        wait = self._waiting(msg)
        if wait is not None and not wait.dispatched.done():
            wait.dispatched.set_result(wire.unpack(msg.data))

    async def _on_outcome(self, msg: Msg) -> None:
        wait = self._waiting(msg)
        if wait is not None and not wait.outcome.done():
            wait.outcome.set_result(wire.unpack(msg.data).get("value"))


class SyncWait:
    """One sync webhook request's wait for its event's dispatch report and first outcome."""

    def __init__(self, waits: SyncWaits, event_id: str) -> None:
        self.waits, self.event_id = waits, event_id
        self.dispatched: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> SyncWait:
        await self.waits._ready()
        self.waits._waits[self.event_id] = self
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.waits._waits.pop(self.event_id, None)

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
