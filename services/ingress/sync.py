"""Sync webhooks: the HTTP response comes from the first outcome of the event's sessions."""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

from akcore import subjects, wire
from akcore.errors import shown
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


# Headers of the message's framing and of the connection, which the server sets: a
# handler's Content-Length or Transfer-Encoding beside the server's could make a proxy in
# front read the body as a second response (on a connection it shares between clients).
SERVER_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "date",
        "keep-alive",
        "proxy-connection",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# What an outcome's headers may take in all: an answer is not a way to send megabytes of
# headers that a proxy in front would refuse (or hold).
MAX_HEADERS, MAX_HEADER_BYTES = 100, 64 * 1024
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header's name (RFC 9110)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # (a tab is fine in a value)


class BadOutcome(ValueError):
    """An outcome that cannot be sent as an HTTP response; the message says why."""


def outcome_response(value: Any) -> Response:
    """An ``http_outcome`` becomes that response; any other outcome is a JSON 200. One the
    server cannot send as it is (a status that is not a final one, a header name that is no
    token or a value with a line break, a body that is not JSON) is a 502 saying why."""
    try:
        return _response(value)
    except BadOutcome as e:
        return Response(
            f"The handler's outcome is not a valid HTTP response: {e}\n", status_code=502
        )


def _response(value: Any) -> Response:
    if not (isinstance(value, dict) and "status_code" in value):
        return Response(_json(value), status_code=200, media_type="application/json")
    status = _status(value.get("status_code"))
    headers = _headers(value.get("headers"))
    if status in (204, 205, 304):  # no body, whatever was given (as Go's server drops it)
        return Response(b"", status_code=status, headers=headers)
    if value.get("json") is not None:
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        return Response(_json(value["json"]), status_code=status, headers=headers)
    body = value.get("body")
    if body is None:
        content = b""
    elif isinstance(body, str):
        content = body.encode(errors="replace")
    else:
        content = _json(body).encode()
    return Response(content, status_code=status, headers=headers)


def _status(raw: Any) -> int:
    """0 or none is 200, as AutoKitteh; a final response's status is 200-599."""
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    try:
        status = int(raw or 200) if not isinstance(raw, (bool, float)) else -1
    except (TypeError, ValueError, OverflowError):
        status = -1
    if not 200 <= status <= 599:
        raise BadOutcome(f"status code {shown(raw)} (give 200-599)")
    return status


def _headers(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadOutcome(f"headers must be a dict of names to values, not {type(raw).__name__}")
    if len(raw) > MAX_HEADERS:
        raise BadOutcome(f"{len(raw)} headers, more than {MAX_HEADERS}")
    headers: dict[str, str] = {}
    by_name: dict[str, str] = {}  # lower-cased name -> the name kept
    size = 0
    for k, v in raw.items():
        name = str(k)
        if not _TOKEN.fullmatch(name):
            raise BadOutcome(f"header name {shown(name)} is not a valid HTTP header name")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise BadOutcome(f"header {name}'s value is {type(v).__name__}, not text")
        value = str(v)
        if _CONTROL.search(value):
            raise BadOutcome(f"header {name}'s value has a line break or another control character")
        size += len(name) + len(value.encode(errors="replace")) + 4
        if size > MAX_HEADER_BYTES:
            raise BadOutcome(f"the headers take more than {MAX_HEADER_BYTES} bytes")
        if name.lower() in SERVER_HEADERS:
            continue  # (the server's own: see SERVER_HEADERS)
        # one header of a name, the last given (as Go's Header.Set, names in any case)
        headers.pop(by_name.get(name.lower(), ""), None)
        by_name[name.lower()] = name
        # sent as its UTF-8 bytes (as Go's server does; headers are Latin-1 to Starlette)
        headers[name] = value.encode(errors="replace").decode("latin-1")
    return headers


def _json(value: Any) -> str:
    try:
        return json.dumps(value) + "\n"
    except (TypeError, ValueError) as e:  # bytes, a set, a circular list
        raise BadOutcome(f"the body cannot be sent as JSON: {e}") from None
