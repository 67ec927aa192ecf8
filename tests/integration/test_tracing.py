"""One trace per session across the four services, seen by in-memory exporters in each."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from ak_dispatcher.service import run as run_dispatcher
from ak_ingress.app import create_app
from ak_runner.service import run as run_runner
from ak_store.service import run as run_store
from akcore import bus, tracing
from akcore.config import Settings
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .conftest import running
from .helpers import deploy, eventually

SECRET = "span-secret-q8z1"
ARG = "activity-argument-77c"

CODE = b"""\
import os

import autokitteh


@autokitteh.activity
def fetch(x):
    return x + "!"


@autokitteh.activity
def boom():
    raise KeyError("nope")


def greet(event):
    a = fetch(event.data.body.json["arg"])
    try:
        boom()
    except KeyError:
        pass
    print(len(os.environ["TOKEN"]), a[-1])
"""


@pytest.fixture
def exporters() -> Iterator[dict[str, InMemorySpanExporter]]:
    by_service: dict[str, InMemorySpanExporter] = {}

    def make(service: str) -> InMemorySpanExporter:
        return by_service.setdefault(service, InMemorySpanExporter())

    tracing.EXTRA_EXPORTERS.append(make)
    yield by_service
    tracing.EXTRA_EXPORTERS.remove(make)


def _spans(exporters: dict[str, InMemorySpanExporter]) -> list[ReadableSpan]:
    return [s for e in exporters.values() for s in e.get_finished_spans()]


async def test_webhook_session_is_one_trace(
    settings: Settings, exporters: dict[str, InMemorySpanExporter]
) -> None:
    async with (
        running(run_store, settings, "store"),
        running(run_dispatcher, settings, "dispatcher"),
        running(run_runner, settings, "runner"),
    ):
        nc = await bus.connect(settings.nats_url, "trace-test")
        d = await deploy(nc, "traced", {"simple.py": CODE})
        await bus.store_call(
            nc, "var.set", {"project": "traced", "name": "TOKEN", "value": SECRET, "secret": True}
        )
        app = create_app(nc, tracing.Telemetry("ingress"))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            r = await http.post(f"/webhooks/{d['trigger']['webhook_slug']}", json={"arg": ARG})
            assert r.status_code == 202

        def session_done() -> list[ReadableSpan] | None:
            return [s for s in _spans(exporters) if s.name == "session simple.py:greet"] or None

        async def probe() -> list[ReadableSpan] | None:
            return session_done()

        [session] = await eventually(probe, timeout=20)
        await nc.close()

    spans = _spans(exporters)
    assert set(exporters) == {"ak-ingress", "ak-dispatcher", "ak-runner", "ak-store"}
    assert {s.context.trace_id for s in spans} == {session.context.trace_id}
    by_name = {s.name: s for s in spans}
    root = by_name["POST /webhooks/{slug}"]
    dispatch = by_name["dispatch"]
    assert root.parent is None
    assert dispatch.parent is not None and dispatch.parent.span_id == root.context.span_id
    assert session.parent is not None and session.parent.span_id == dispatch.context.span_id
    for s in spans:  # every service put spans in the trace
        assert s.resource.attributes["service.name"] in exporters

    activities = sorted(
        (s for s in spans if s.name.startswith("activity ")),
        key=lambda s: s.attributes["ak.activity.seq"],  # type: ignore[index]
    )
    assert [s.name for s in activities] == ["activity fetch", "activity boom"]
    for a in activities:
        assert a.parent is not None and a.parent.span_id == session.context.span_id
        assert a.attributes["ak.session_id"] == session.attributes["ak.session_id"]  # type: ignore[index]
        assert a.attributes["ak.project"] == d["project_id"]  # type: ignore[index]
        assert a.attributes["ak.deployment_id"] == d["deployment_id"]  # type: ignore[index]
    assert activities[0].attributes["ak.activity.function"] == "fetch"  # type: ignore[index]
    assert activities[1].status.status_code.name == "ERROR"
    assert activities[1].status.description == "KeyError"
    assert session.attributes["ak.state"] == "COMPLETED"  # type: ignore[index]
    assert session.attributes["ak.attempt"] == 1  # type: ignore[index]

    store_in_session = [
        s
        for s in spans
        if s.resource.attributes["service.name"] == "ak-store"
        and s.parent is not None
        and s.parent.span_id == session.context.span_id
    ]
    assert {"build.get", "session.env"} <= {s.name for s in store_in_session}
    assert all(
        s.attributes["ak.session_id"] == session.attributes["ak.session_id"]  # type: ignore[index]
        for s in store_in_session
    )

    # Nothing a user sent or set is in any span: not the secret, not the argument or result.
    for s in spans:
        text = s.to_json()
        assert SECRET not in text and ARG not in text, s.name
