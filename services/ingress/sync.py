"""Sync webhooks: the HTTP response comes from the first outcome of the event's sessions."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from asyncio import FIRST_COMPLETED as FIRST
from typing import Any

from akcore import bus, config, subjects, wire
from akcore.errors import shown
from fastapi import Response
from nats.aio.client import Client
from nats.aio.msg import Msg

from .uiauth import UI_COOKIES

TIMEOUT = config.or_default(config.webhook_timeout, 30.0)


class SyncWaits:
    """The sync webhook requests of one ingress process waiting for their events' dispatch
    reports, outcomes and sessions' ends: one subscription to the reports and one to the
    outcomes and ends (``subjects.OUTCOMES_ALL``: heard in the order sent) for all
    requests, made once. (Subscriptions, a flush and unsubscribes per request were a third
    of ingress's CPU per sync request.) With several ingress processes, each also hears the
    others' and drops them unread."""

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
            await self.nc.subscribe(subjects.OUTCOMES_ALL, cb=self._on_outcome),
        ]
        try:
            await bus.flush(self.nc)  # the server has them before any event is published
        except BaseException:
            for sub in subs:
                await sub.unsubscribe()
            raise

    async def _on_dispatched(self, msg: Msg) -> None:
        wait = self._waits.get(msg.subject.rpartition(".")[2])
        if wait is not None and not wait.dispatched.done():
            wait.dispatched.set_result(wire.unpack(msg.data))

    async def _on_outcome(self, msg: Msg) -> None:
        # ak.outcomes.<event> (an outcome) or ak.outcomes.<event>.ended (a session's end)
        _, _, event_id, *ended = msg.subject.split(".", 3)
        wait = self._waits.get(event_id)
        if wait is None:
            return
        if ended == ["ended"]:
            wait.heard_end(wire.unpack(msg.data))
        elif not ended and not wait.outcome.done():
            wait.outcome.set_result(wire.unpack(msg.data).get("value"))


class SyncWait:
    """One sync webhook request's wait for its event's dispatch report and first outcome,
    or for every session it started to end without one."""

    def __init__(self, waits: SyncWaits, event_id: str) -> None:
        self.waits, self.event_id = waits, event_id
        loop = asyncio.get_running_loop()
        self.dispatched: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.outcome: asyncio.Future[Any] = loop.create_future()
        self.ended: dict[str, str] = {}  # session id -> its final state
        self._news: asyncio.Future[None] = loop.create_future()  # another session ended

    def heard_end(self, end: Any) -> None:
        """A runner's word that one of the event's sessions ended (checked: a session id
        and a final state); it may come before the dispatcher's report."""
        if not isinstance(end, dict):
            return
        sid, state = end.get("session_id"), end.get("state")
        if isinstance(sid, str) and state in wire.FINAL_STATES:
            self.ended[sid] = state
            if not self._news.done():
                self._news.set_result(None)

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
        sessions = [s for s in report.get("sessions") or () if isinstance(s, str)]
        if not sessions and not report.get("signaled"):
            return Response(
                "No sessions were started or signaled for sync webhook\n", status_code=502
            )
        while not self.outcome.done():
            # Only the event's own sessions are known to end: a waiting session it was
            # delivered to (signaled) may answer it any time until the deadline.
            if not report.get("signaled") and all(s in self.ended for s in sessions):
                return self._no_outcome(sessions)
            left = deadline - loop.time()
            if left <= 0:
                return Response("Gateway Timeout\n", status_code=504)
            if self._news.done():
                self._news = loop.create_future()
            await asyncio.wait((self.outcome, self._news), timeout=left, return_when=FIRST)
        return outcome_response(self.outcome.result())

    def _no_outcome(self, sessions: list[str]) -> Response:
        if len(sessions) == 1:
            sid = sessions[0]
            why = (
                f"session {sid} ended ({self.ended[sid]}) without an outcome for this event; "
                f"ak session log {sid} shows what it did"
            )
        else:
            states = ", ".join(f"{s} ({self.ended[s]})" for s in sessions)
            why = f"the event's sessions ended without an outcome for it: {states}"
        return Response(f"Bad Gateway: {why}\n", status_code=502)


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
    if body is None and value.get("body_base64") is not None:
        content = _base64(value["body_base64"])  # bytes that are not text (``http_outcome``)
    elif body is None:
        content = b""
    elif isinstance(body, str):
        content = body.encode(errors="replace")
    else:
        content = _json(body).encode()
    return Response(content, status_code=status, headers=headers)


def _base64(raw: Any) -> bytes:
    if not isinstance(raw, str):
        raise BadOutcome(f"body_base64 must be text, not {type(raw).__name__}")
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        raise BadOutcome(f"body_base64 {shown(raw)} is not base64") from None


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
        if name.lower() == "set-cookie" and _cookie_name(value).lower().startswith(UI_COOKIES):
            raise BadOutcome(
                f"header Set-Cookie sets {_cookie_name(value)!r}, a cookie of this server's "
                f"web UI (named {UI_COOKIES}...): name the handler's cookie otherwise"
            )
        # one header of a name, the last given (as Go's Header.Set, names in any case)
        headers.pop(by_name.get(name.lower(), ""), None)
        by_name[name.lower()] = name
        # sent as its UTF-8 bytes (as Go's server does; headers are Latin-1 to Starlette)
        headers[name] = value.encode(errors="replace").decode("latin-1")
    return headers


def _cookie_name(set_cookie: str) -> str:
    """The name a browser reads in a Set-Cookie value (before the first ``=`` of its first
    ``;`` part, without the spaces around it; none without an ``=``)."""
    pair = set_cookie.split(";", 1)[0]
    return pair.partition("=")[0].strip(" \t") if "=" in pair else ""


def _json(value: Any) -> str:
    try:
        return json.dumps(value) + "\n"
    except (TypeError, ValueError) as e:  # bytes, a set, a circular list
        raise BadOutcome(f"the body cannot be sent as JSON: {e}") from None
