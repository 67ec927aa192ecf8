"""OpenTelemetry for the services: spans by OpenTelemetry's API with W3C context over NATS
headers, export by the standard ``OTEL_*`` variables through the SDK's exporters, and every
finished span sent to the store (``ak.spans``) so ``ak session trace`` works without a
collector. The spans themselves are this module's (``_Span``): the SDK's tracer costs ~30 us
a span (ours ~12 us), about a tenth of what ingress or the dispatcher spends on a session.

Spans carry ids, names, durations and a few ``ak.*`` attributes, never values: no var or
secret, no activity argument or result, no exception message (only its type).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from nats.aio.client import Client
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
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
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SCOPE = InstrumentationScope("autokitteh")
_VALUE_TYPES = (str, bool, int, float)  # attribute values kept (the store keeps these)


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


class _Span(Span):
    """A span of this system: OpenTelemetry's span interface, none of its SDK's work per
    span (sampler, locks, attribute copies, processors). Finished spans go to the store as
    plain records, and to the standard exporters (if any are set) as the SDK's spans."""

    def __init__(
        self,
        tel: Telemetry,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_ns: int,
    ) -> None:
        self._tel, self.name, self.context, self.parent, self.kind = (
            tel,
            name,
            context,
            parent,
            kind,
        )
        self.attributes = attributes
        self.events: list[tuple[str, int, dict[str, Any]]] = []
        self.status = Status(StatusCode.UNSET)
        self.start_ns, self.end_ns = start_ns, 0

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return not self.end_ns

    def set_attribute(self, key: str, value: Any) -> None:
        if not self.end_ns and isinstance(value, _VALUE_TYPES):
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None
    ) -> None:
        if not self.end_ns:
            self.events.append((name, timestamp or time.time_ns(), _kept(attributes)))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        pass  # not used by the system

    def update_name(self, name: str) -> None:
        self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The type only: an exception's message may hold what the user sent.
        self.add_event("exception", {"exception.type": type(exception).__name__}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if not self.end_ns:
            self.end_ns = max(self.start_ns, end_time or time.time_ns())
            self._tel._finished(self)

    def record(self) -> dict[str, Any]:
        """The finished span as the store keeps it."""
        return {
            "trace_id": f"{self.context.trace_id:032x}",
            "span_id": f"{self.context.span_id:016x}",
            "parent_id": f"{self.parent.span_id:016x}" if self.parent else "",
            "name": self.name,
            "service": self._tel.service,
            "start_us": self.start_ns // 1000,
            "end_us": self.end_ns // 1000,
            "status": self.status.status_code.name,
            "status_description": self.status.description or "",
            "attributes": self.attributes,
            "events": [{"name": n, "t_us": t // 1000, "attributes": a} for n, t, a in self.events],
        }

    def readable(self) -> ReadableSpan:
        """The finished span as the SDK's exporters take it."""
        return ReadableSpan(
            name=self.name,
            context=self.context,
            parent=self.parent,
            resource=self._tel.resource,
            attributes=dict(self.attributes),
            events=[Event(n, a, t) for n, t, a in self.events],
            kind=self.kind,
            status=self.status,
            start_time=self.start_ns,
            end_time=self.end_ns,
            instrumentation_scope=_SCOPE,
        )


class _StoreSink:
    """Sends finished spans to the store in small batches over core NATS."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._loop = asyncio.get_running_loop()
        self._pending: list[dict[str, Any]] = []
        self._task = self._loop.create_task(self._flush_forever())

    def add(self, rec: dict[str, Any]) -> None:
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
    """A service's tracer. Not a global provider: several services can share a process
    (tests) and each keeps its own ``service.name``."""

    def __init__(self, service: str) -> None:
        self.service = f"ak-{service}"
        self.resource = Resource.create({"service.name": self.service})
        self._processors: list[SpanProcessor] = [
            BatchSpanProcessor(exporter) for exporter in _env_exporters()
        ]
        self._processors += [SimpleSpanProcessor(make(self.service)) for make in EXTRA_EXPORTERS]
        self._sink: _StoreSink | None = None

    def send_to_store(self, nc: Client) -> None:
        """From now on finished spans also go to the store (call from the event loop)."""
        self._sink = _StoreSink(nc)

    async def close(self) -> None:
        if self._sink is not None:
            await self._sink.flush()
            self._sink.shutdown()
        for p in self._processors:
            p.shutdown()

    def _finished(self, span: _Span) -> None:
        if self._sink is not None:
            self._sink.add(span.record())
        if self._processors:
            readable = span.readable()
            for p in self._processors:
                p.on_end(readable)

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        start_time: int | None = None,
    ) -> _Span:
        """A span (not made current) under the span of ``context`` (default: the current
        one), with the session's ids from its baggage unless ``attributes`` has them."""
        if context is None:
            context = otel_context.get_current()
        attrs = _kept(attributes)
        bag = baggage.get_all(context)
        for key in SESSION_KEYS:
            if key not in attrs and key in bag:
                attrs[key] = str(bag[key])
        above = trace.get_current_span(context).get_span_context()
        parent = above if above.is_valid else None
        trace_id = parent.trace_id if parent else _random_id(128)
        ctx = SpanContext(trace_id, _random_id(64), is_remote=False, trace_flags=_SAMPLED)
        return _Span(self, name, ctx, parent, kind, attrs, start_time or time.time_ns())

    @contextmanager
    def span(
        self,
        name: str,
        parent: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[Span]:
        """A current span; an exception escaping it marks it failed with its type only.
        ``parent`` (default: the current context) stays current around it, its baggage too."""
        context = parent if parent is not None else otel_context.get_current()
        span = self.start_span(name, context, kind, attributes)
        token = otel_context.attach(trace.set_span_in_context(span, context))
        try:
            yield span
        except BaseException as e:
            fail(span, type(e).__name__)
            raise
        finally:
            otel_context.detach(token)
            span.end()


def _kept(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attributes of the types a span keeps (the store keeps these too)."""
    return {k: v for k, v in (attributes or {}).items() if isinstance(v, _VALUE_TYPES)}


def _random_id(bits: int) -> int:
    while not (n := random.getrandbits(bits)):  # zero is the invalid id
        pass
    return n


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
