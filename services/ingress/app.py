"""HTTP routes: webhooks in, the CLI's API forwarded to the store, health and readiness."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from akcore import bus, ids, ops, subjects, timefmt, tracing, values, wire
from akcore.config import ENV_HTTP_MAX_API_BODY, ENV_HTTP_WEBHOOK_PROJECT_MB, HttpLimits
from akcore.datakey import Keyring
from akcore.errors import AKError, InvalidArgument, NotFound, ResourceExhausted
from akcore.secrets import load_keyring
from akcore.webhook import MAX_BODY, json_containers, normalize_request
from fastapi import FastAPI, Request, Response
from nats.aio.client import Client
from opentelemetry.trace import Span, SpanKind

from . import github, slack
from .auth import Authenticator
from .body import read_body
from .clients import ClientAddresses
from .commands import perform
from .intake import EventsFull, NotAcknowledged, store_event
from .lookups import WebhookLookups
from .sync import SyncWaits
from .throttle import FailedTries, Refusals, WebhookBytes
from .ui import add_ui

log = logging.getLogger(__name__)

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
MSGPACK = "application/msgpack"
# Every answer of this port but the web UI's own is a sandboxed document (an opaque origin
# of its own), whatever else it says: a sync webhook's answer is its handler's page, on the
# UI's origin, and its script would otherwise read the UI's pages (their CSRF token) and post
# their forms as the admin who opened it (docs/ui.md#security). Its script still runs.
SANDBOX = (
    b"content-security-policy",
    b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads",
)
# Audio or video is the exception: opened by its URL it is the browser's own player, which
# runs no script of the answer's, and which, sandboxed, fetches the media from its opaque
# origin (cross-origin: refused) and plays nothing. No "+" (a "+xml" type renders as XML,
# whose script runs). It is sent with NOSNIFF, whatever the answer said, so that no browser
# reads its body as a page.
MEDIA = re.compile(rb"(audio|video)/[a-z0-9][a-z0-9.-]*")
NOSNIFF = (b"x-content-type-options", b"nosniff")


# An over-limit webhook body is still read (and dropped) up to this size (read_body).
DRAIN_LIMIT = 16 * MAX_BODY
# What a field of a webhook's query string counts besides its bytes (``_head_bytes``):
# parsing one takes ~1 µs of ingress's event loop (a form body's past 1,000 are not
# parsed for that reason; a query's are), and a 64 KiB query of 32,000 fields ~32 ms:
# 60 such requests a second, within their project's bytes, held another project's sync
# webhook 5 s at the median.
QUERY_FIELD_BYTES = 64


def _raw_url(request: Request) -> str:
    path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def _head_bytes(request: Request, raw_url: str) -> int:
    """What a webhook request's event carries besides its body: its URL twice (as sent,
    and as a path and a query) and its headers. A flood of 60 KiB query strings with no
    body counted 1 KiB a request (``WebhookBytes``), a 40th of their events' size. And
    ``QUERY_FIELD_BYTES`` for each field of its query (each ``&``), which ingress parses
    into a map in its event loop."""
    query: bytes = request.scope.get("query_string", b"")
    fields = query.count(b"&")
    return (
        2 * len(raw_url)
        + sum(len(k) + len(v) for k, v in request.headers.raw)
        + QUERY_FIELD_BYTES * fields
    )


def create_app(
    nc: Client,
    telemetry: tracing.Telemetry | None = None,
    lookups: WebhookLookups | None = None,
    tokens_required: bool = True,
    limits: HttpLimits | None = None,
    keys: Keyring | None = None,
    worker_uids: tuple[int, int] | None = None,
) -> WebhookFront:
    """The HTTP app (an ASGI callable). ``lookups`` keeps webhook lookups (it should watch
    the store's change notices; without one every request asks the store, and only this
    process remembers the last known answers). ``tokens_required``: ``/api`` calls need an
    API token (off only for dev mode on loopback). ``limits`` caps ``/api`` bodies and names
    the trusted proxies; a loopback connection of ``worker_uids`` (a handler's) is never
    one. ``keys`` seal the events' data (by default the data home's)."""
    app = FastAPI(title="autokitteh ingress", docs_url=None, redoc_url=None, openapi_url=None)
    js = nc.jetstream()
    tel = telemetry or tracing.Telemetry("ingress")
    lookups = lookups or WebhookLookups(nc, ttl=0)
    auth = Authenticator(nc, tokens_required)
    limits = limits or HttpLimits()
    max_api_body = limits.max_api_body
    clients = ClientAddresses(limits.trusted_proxies, worker_uids)

    keys = keys or load_keyring()
    sync_waits = SyncWaits(nc)
    webhook_bytes = WebhookBytes(limits.webhook_project_mb * 1024 * 1024)

    async def webhook(request: Request, slug: str) -> Response:
        """The root span of the trace of every session this request starts."""
        attrs = {"http.request.method": request.method, "http.route": "/webhooks/{slug}"}
        name = f"{request.method} /webhooks/{{slug}}"
        with tel.span(name, kind=SpanKind.SERVER, attributes=attrs) as span:
            resp = await receive(request, slug, span)
            span.set_attribute("http.response.status_code", resp.status_code)
            if resp.status_code >= 500:
                tracing.fail(span, str(resp.status_code))
            return resp

    async def receive(request: Request, slug: str, span: Span) -> Response:
        body = await read_body(request, MAX_BODY, DRAIN_LIMIT)
        if body is None:
            return Response(f"Request Entity Too Large (>{MAX_BODY} bytes)\n", status_code=413)
        try:
            target = await lookups.target(slug)
        except NotFound:
            return Response("Not Found\n", status_code=404)
        except AKError as e:  # the store is away and this webhook has no last known lookup
            log.warning("webhook %s: lookup failed: %s", slug, e)
            return Response("Service Unavailable\n", status_code=503)
        raw_url = _raw_url(request)
        if later := webhook_bytes.take(
            target.project_id, len(body) + _head_bytes(request, raw_url)
        ):
            return _over_budget(limits.webhook_project_mb, later)
        data = normalize_request(request.method, raw_url, request.headers.items(), body, slug)
        webhook_bytes.owe(target.project_id, _body_extra(data["body"], body))
        event = wire.Event(
            event_id=ids.new_id("evt"),
            project_id=target.project_id,
            destination_id=target.trigger_id,
            event_type=request.method.lower(),
            data=data,
            memo={
                "method": request.method,
                "webhook_slug": slug,
                "remote_addr": clients.of_request(request),
                "trigger_id": target.trigger_id,
            },
            created_at_us=timefmt.now_us(),
        )
        span.set_attribute("ak.project", event.project_id)
        span.set_attribute("ak.trigger_id", event.destination_id)
        span.set_attribute("ak.event_id", event.event_id)
        if target.is_sync:
            event_id = event.event_id
            async with sync_waits.wait(event_id) as wait:
                failed = await publish(event, slug)
                # The wait may last the webhook timeout (30 s), after its client has gone:
                # the request's data is not held meanwhile (~1 MiB for a 512 KiB body, 12
                # MiB parsed from one of 175,000 empty maps; a flood of them, each client
                # leaving at once, grew ingress by 2 GiB).
                del body, data, event
                if failed is not None:
                    return failed
                resp = await wait.response()
            resp.headers["AutoKitteh-Event-ID"] = event_id
            return resp
        if (failed := await publish(event, slug)) is not None:
            return failed
        # The event is acknowledged by JetStream: from here on it cannot be lost.
        return Response(
            status_code=202,
            headers={"AutoKitteh-Event-ID": event.event_id, "Cache-Control": "no-cache"},
        )

    async def publish(event: wire.Event, slug: str) -> Response | None:
        """Stores the event (``intake.store_event``); the response to send instead of the
        webhook's when it was not acknowledged."""
        try:
            await store_event(nc, event, keys)
        except EventsFull as e:
            log.error("webhook %s: event not stored: AK_EVENTS is full", slug)
            return Response(
                f"Service Unavailable: {e}\n", status_code=503, headers={"Retry-After": "10"}
            )
        except NotAcknowledged as e:  # sent, no answer: it may yet be stored
            log.error("webhook %s: %s", slug, e)
            return Response(
                "Gateway Timeout: the event store did not answer in time; the event may "
                "still be stored and run (ak event get <the AutoKitteh-Event-ID header>), "
                "check before sending it again\n",
                status_code=504,
                headers={"AutoKitteh-Event-ID": event.event_id},
            )
        except AKError as e:
            log.error("webhook %s: %s", slug, e)
            return Response("Service Unavailable\n", status_code=503)
        return None

    # Unsigned or forged deliveries cost the store a lookup and a signature check: each
    # address has a budget for each connection it names (``Refusals``).
    refused = FailedTries("refused deliveries (bad signature) for this connection")

    async def provider_request(
        request: Request, route: str, handle: Callable[[bytes, Refusals], Awaitable[Response]]
    ) -> Response:
        """A provider's request (GitHub, Slack): read, handled, refusals counted."""
        attrs = {"http.request.method": "POST", "http.route": route}
        with tel.span(f"POST {route}", kind=SpanKind.SERVER, attributes=attrs) as span:
            address = clients.of_request(request)
            try:
                body = await read_body(request, MAX_BODY, DRAIN_LIMIT)
                if body is None:
                    resp = Response(f"Request Entity Too Large (>{MAX_BODY} bytes)\n", 413)
                else:
                    resp = await handle(body, Refusals(refused, address))
            except ResourceExhausted as e:
                resp = Response(f"{e.message}\n", 429, headers={"Retry-After": "1"})
            span.set_attribute("http.response.status_code", resp.status_code)
            return resp

    async def github_webhook(request: Request, key: str = "") -> Response:
        """A GitHub delivery: for a connection's own webhook (``key``) or an app's."""

        async def handle(body: bytes, refusals: Refusals) -> Response:
            return await github.deliver(nc, request, body, key, publish, refusals)

        return await provider_request(request, "/github/webhook", handle)

    app.add_api_route("/github/webhook", github_webhook, methods=["POST"])
    app.add_api_route("/github/webhook/{key}", github_webhook, methods=["POST"])

    async def slack_request(request: Request) -> Response:
        """A Slack request: an Events API callback, a slash command or an interaction."""
        kind = request.url.path.rsplit("/", 1)[1]

        async def handle(body: bytes, refusals: Refusals) -> Response:
            return await slack.receive(nc, request, body, kind, publish, refusals)

        return await provider_request(request, f"/slack/{kind}", handle)

    for kind in slack.CONTENT_TYPES:
        app.add_api_route(f"/slack/{kind}", slack_request, methods=["POST"])

    @app.get("/store/{project_id}/{key:path}")
    async def public_value(project_id: str, key: str) -> Response:
        """A published value of a project's store, as JSON, without authentication."""
        if not ids.is_id(project_id, "prj"):
            return Response("invalid project id\n", status_code=400)
        try:
            kv = await bus.values_bucket(js)
            kv_key = values.kv_key(project_id, key)
            entry = await kv.get(kv_key)
            stored = values.open_entry(keys, kv_key, entry.value)
        except Exception:
            stored = None
        if not stored or not stored.get("p"):
            return Response("Not Found\n", status_code=404)
        return Response(json.dumps(stored["v"]) + "\n", media_type="application/json")

    app.add_api_route("/webhooks/{slug}", webhook, methods=METHODS)
    app.add_api_route("/webhooks/{slug}/{rest:path}", webhook, methods=METHODS)

    @app.post("/api/{name}")
    async def api(name: str, request: Request) -> Response:
        """A public operation of ``akcore.ops``, for a caller with an API token."""
        try:
            caller = await auth.caller(
                request.headers.get("authorization"),
                request.scope.get("client"),
                request.scope.get("server"),
                request.headers,
                clients.of_request(request),
            )
            ops.public(name)  # NotFound before the body is read
            body = await read_body(request, max_api_body, max_api_body)
            if body is None:
                return _too_large(max_api_body)
            try:
                args = wire.decode(wire.StoreRequest, body).args
            except Exception:
                raise InvalidArgument("request body is not a msgpack map") from None
            result = await perform(nc, name, args, caller, keys)
        except AKError as e:
            reply = wire.StoreReply(ok=False, error_kind=e.kind, error=e.message)
            return _reply(reply, e.http_status)
        except Exception as e:  # the client's answer is the API's, a 500 all the same
            reply = wire.StoreReply(
                ok=False, error_kind=AKError.kind, error=bus.internal(name, e, "ingress")
            )
            return _reply(reply, AKError.http_status)
        return _reply(wire.StoreReply(ok=True, result=result), 200)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        down = [
            s for s in subjects.SERVICES if s != "ingress" and not await bus.ping_service(nc, s)
        ]
        if not nc.is_connected or down:
            return Response(
                f"not ready: {', '.join(down) or 'nats'} not answering\n", status_code=503
            )
        return Response("ready\n", status_code=200)

    add_ui(app, nc, auth, keys, clients)
    return WebhookFront(app, webhook)


class WebhookFront:
    """Serves ``/webhooks/...`` without FastAPI's routing and middleware (most of the CPU a
    webhook cost), with the same handler; everything else goes to the app."""

    PREFIX = "/webhooks/"

    def __init__(self, app: FastAPI, webhook: Any) -> None:
        self.app, self.webhook = app, webhook

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if scope["type"] == "http" and not is_ui_path(path):
            send = _sandboxed(send)
        slug = path[len(self.PREFIX) :].split("/", 1)[0] if path.startswith(self.PREFIX) else ""
        if not slug or scope.get("method") not in METHODS:
            await self.app(scope, receive, send)
            return
        response = await self.webhook(Request(scope, receive), slug)
        await response(scope, receive, send)


def is_ui_path(path: str) -> bool:
    """Whether ``path`` is the web UI's (its pages set their own policy, ``ui.HEADERS``)."""
    return path == "/ui" or path.startswith("/ui/")


def _sandboxed(send: Any) -> Any:
    """``send`` with ``SANDBOX`` added to the response's headers (beside any policy the
    answer has: a browser enforces each), or, for audio or video, ``NOSNIFF`` in place of
    the answer's own (``MEDIA``)."""

    async def sending(message: Any) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if _is_media(headers):
                headers = [h for h in headers if h[0].lower() != NOSNIFF[0]] + [NOSNIFF]
            else:
                headers.append(SANDBOX)
            message = {**message, "headers": headers}
        await send(message)

    return sending


def _is_media(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the answer has one Content-Type, and it is audio or video (``MEDIA``)."""
    types = [value for name, value in headers if name.lower() == b"content-type"]
    if len(types) != 1:
        return False
    return MEDIA.fullmatch(types[0].split(b";", 1)[0].strip().lower()) is not None


def _body_extra(parsed: dict[str, Any], body: bytes) -> int:
    """What a webhook's body costs its project's budget besides its bytes, once parsed: its
    bytes again when its event carries them as text too (``body.text``), and a JSON body's
    lists and maps (``WebhookBytes.JSON_CONTAINER_BYTES`` each)."""
    extra = len(body) if parsed["text"] is not None else 0
    if parsed["json"] is not None:
        extra += WebhookBytes.JSON_CONTAINER_BYTES * json_containers(body)
    return extra


def _over_budget(mb_per_second: int, wait: float) -> Response:
    """429: the project's webhooks brought in more than their share (``WebhookBytes``)."""
    seconds = max(1, math.ceil(wait))
    return Response(
        f"Too Many Requests: this project's webhooks may bring {mb_per_second} MiB a second "
        f"into this server ({ENV_HTTP_WEBHOOK_PROJECT_MB}), and more came; try again in "
        f"{seconds} s\n",
        status_code=429,
        headers={"Retry-After": str(seconds)},
    )


def _too_large(limit: int) -> Response:
    """413 without reading the body: the connection is closed after it."""
    error = (
        f"the request body is over the {limit} byte limit of the API ({ENV_HTTP_MAX_API_BODY}): "
        "send less (a build holds the project's code only)"
    )
    reply = wire.StoreReply(ok=False, error_kind="invalid_argument", error=error)
    response = _reply(reply, 413)
    response.headers["Connection"] = "close"
    return response


def _reply(reply: wire.StoreReply, status: int) -> Response:
    return Response(wire.encode(reply), status_code=status, media_type=MSGPACK)
