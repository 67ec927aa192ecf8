"""OpenTelemetry for the services: one tracer provider per service, W3C context over NATS
headers, export by the standard ``OTEL_*`` variables, and every finished span sent to the
store (``ak.spans``) so ``ak session trace`` works without a collector.

Spans carry ids, names, durations and a few ``ak.*`` attributes, never values: no var or
secret, no activity argument or result, no exception message (only its type).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from nats.aio.client import Client
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import subjects, wire

log = logging.getLogger(__name__)

# The attributes every span of a session carries; passed on to other services as baggage.
SESSION_KEYS = ("ak.session_id", "ak.project", "ak.deployment_id")

# Tests add exporters here (called with the service name) before starting a service.
EXTRA_EXPORTERS: list[Callable[[str], SpanExporter]] = []

_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
_SINK_BATCH = 256
_SINK_EVERY = 0.2  # seconds between flushes of spans to the store


def _env_exporters() -> Iterator[SpanExporter]:
    """Exporters the standard variables ask for; none unless an endpoint or
    ``OTEL_TRACES_EXPORTER`` is set (an unset OTLP endpoint would only log errors)."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    names = os.environ.get("OTEL_TRACES_EXPORTER") or ("otlp" if endpoint else "none")
    for name in (n.strip() for n in names.split(",")):
        if name == "otlp":
            protocol = (
                os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            )
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcExporter,
                )

                yield GrpcExporter()
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as HttpExporter,
                )

                yield HttpExporter()
        elif name == "console":
            yield ConsoleSpanExporter()
        elif name not in ("none", ""):
            log.warning("OTEL_TRACES_EXPORTER %r is not supported (otlp, console, none)", name)


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as the store keeps it."""
    ctx = span.get_span_context()
    assert ctx is not None
    attrs = {k: v for k, v in (span.attributes or {}).items() if isinstance(v, str | int | float)}
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else "",
        "name": span.name,
        "service": str(span.resource.attributes.get("service.name", "")),
        "start_us": (span.start_time or 0) // 1000,
        "end_us": (span.end_time or 0) // 1000,
        "status": span.status.status_code.name,
        "status_description": span.status.description or "",
        "attributes": attrs,
        "events": [
            {"name": e.name, "t_us": e.timestamp // 1000, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
    }


class _StoreSink(SpanProcessor):
    """Sends finished spans to the store in small batches over core NATS."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._loop = asyncio.get_running_loop()
        self._pending: list[dict[str, Any]] = []
        self._task = self._loop.create_task(self._flush_forever())

    def on_end(self, span: ReadableSpan) -> None:
        rec = span_record(span)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._pending.append(rec)
        else:
            self._loop.call_soon_threadsafe(self._pending.append, rec)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(_SINK_EVERY)
            await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:_SINK_BATCH], self._pending[_SINK_BATCH:]
            try:
                await self._nc.publish(subjects.SPANS, wire.pack(batch))
            except Exception as e:  # diagnostics must never break the service
                log.debug("spans not sent: %s", e)
                return

    def shutdown(self) -> None:
        self._task.cancel()


class Telemetry:
    """A service's tracer. Not the global provider: several services can share a process
    (tests) and each keeps its own ``service.name``."""

    def __init__(self, service: str) -> None:
        self.service = f"ak-{service}"
        self.provider = TracerProvider(resource=Resource.create({"service.name": self.service}))
        for exporter in _env_exporters():
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        for make in EXTRA_EXPORTERS:
            self.provider.add_span_processor(SimpleSpanProcessor(make(self.service)))
        self.tracer = self.provider.get_tracer("autokitteh")
        self._sink: _StoreSink | None = None

    def send_to_store(self, nc: Client) -> None:
        """From now on finished spans also go to the store (call from the event loop)."""
        self._sink = _StoreSink(nc)
        self.provider.add_span_processor(self._sink)

    async def close(self) -> None:
        if self._sink is not None:
            await self._sink.flush()
        self.provider.shutdown()

    @contextmanager
    def span(
        self,
        name: str,
        parent: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[Span]:
        """A current span; an exception escaping it marks it failed with its type only."""
        attrs = dict(attributes or {})
        for key in SESSION_KEYS:  # the session's ids, from baggage, unless given
            value = baggage.get_baggage(key, parent)
            if value is not None and key not in attrs:
                attrs[key] = str(value)
        # Attach the parent context itself (not just its span) so its baggage stays current.
        token = otel_context.attach(parent) if parent is not None else None
        try:
            with self.tracer.start_as_current_span(
                name,
                kind=kind,
                attributes=attrs,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    yield span
                except BaseException as e:
                    fail(span, type(e).__name__)
                    raise
        finally:
            if token is not None:
                otel_context.detach(token)


def fail(span: Span, error_type: str) -> None:
    span.set_status(Status(StatusCode.ERROR, error_type))
    span.set_attribute("error.type", error_type)


def with_session(ctx: Context | None, session_id: str, project: str, deployment: str) -> Context:
    """``ctx`` plus baggage naming the session, so other services can label their spans."""
    for key, value in zip(SESSION_KEYS, (session_id, project, deployment), strict=True):
        ctx = baggage.set_baggage(key, value, ctx)
    assert ctx is not None
    return ctx


def inject(headers: dict[str, str] | None = None, ctx: Context | None = None) -> dict[str, str]:
    """``headers`` plus ``traceparent`` (and ``baggage``) of ``ctx`` or the current context."""
    out = dict(headers or {})
    _PROPAGATOR.inject(out, context=ctx)
    return out


def extract(headers: Mapping[str, str] | None) -> Context:
    return _PROPAGATOR.extract(dict(headers or {}))


def traceparent(ctx: Context | None = None) -> str:
    return inject(None, ctx).get(subjects.HDR_TRACEPARENT, "")
