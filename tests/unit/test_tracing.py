"""Exporter choice from the OTEL_* variables, context over headers, and the trace tree."""

from __future__ import annotations

import pytest
from ak_cli.tracetree import render
from akcore import bus, subjects, tracing, wire
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture(autouse=True)
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ):
        monkeypatch.delenv(k, raising=False)


def _kinds() -> list[type]:
    return [type(e) for e in tracing._env_exporters()]


def test_nothing_exported_without_settings() -> None:
    assert _kinds() == []


def test_endpoint_means_otlp_over_http_unless_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert _kinds() == [Http]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert _kinds() == [Grpc]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,none")
    assert _kinds() == [ConsoleSpanExporter]


def test_context_and_session_baggage_cross_headers() -> None:
    tel = tracing.Telemetry("test")
    with tel.span("root") as root:
        ctx = tracing.with_session(None, "ses_1", "prj_1", "dep_1")
        headers = tracing.inject({"Nats-Msg-Id": "x"}, ctx)
    assert headers["Nats-Msg-Id"] == "x"
    assert headers["traceparent"].split("-")[1] == f"{root.get_span_context().trace_id:032x}"
    with tel.span("child", parent=tracing.extract(headers)) as child:
        assert child.get_span_context().trace_id == root.get_span_context().trace_id
        assert child.attributes["ak.session_id"] == "ses_1"  # type: ignore[attr-defined]
    assert tracing.extract({}) is not None and tracing.traceparent() == ""


def _span(sid: str, parent: str, name: str, start: int, end: int, **kw: object) -> dict:  # type: ignore[type-arg]
    return {
        "span_id": sid,
        "parent_id": parent,
        "name": name,
        "service": "ak-x",
        "start_us": start,
        "end_us": end,
        "attributes": {},
        **kw,
    }


def test_tree_rendering() -> None:
    lines = render(
        [
            _span("a", "", "root", 0, 10_000),
            _span("c", "a", "second", 5_000, 6_000, status="ERROR", status_description="KeyError"),
            _span("b", "a", "first", 1_000, 2_000),
            _span("d", "b", "deep", 1_500, 1_600),
            _span("e", "gone", "orphan", 20_000, 21_000),
        ]
    )
    assert lines == [
        "root                               ak-x   +0.00 ms  10.00 ms",
        "├── first                          ak-x   +1.00 ms  1.00 ms",
        "│   └── deep                       ak-x   +1.50 ms  0.10 ms",
        "└── second ! KeyError              ak-x   +5.00 ms  1.00 ms",
        "orphan (parent span not recorded)  ak-x  +20.00 ms  1.00 ms",
    ]


async def test_finished_spans_go_to_the_store_and_to_exporters(nats_url: str) -> None:
    exported = InMemorySpanExporter()
    tracing.EXTRA_EXPORTERS.append(lambda _: exported)
    try:
        tel = tracing.Telemetry("test")
    finally:
        tracing.EXTRA_EXPORTERS.pop()
    nc = await bus.connect(nats_url, "t")
    sub = await nc.subscribe(subjects.SPANS)
    tel.send_to_store(nc)
    ctx = tracing.with_session(None, "ses_1", "prj_1", "dep_1")
    with pytest.raises(KeyError):
        with tel.span("outer", parent=ctx, attributes={"n": 1, "dropped": None}) as outer:
            step = tel.start_span("step", attributes={"ak.step": 2}, start_time=5_000_000)
            step.end(end_time=1_000)  # before its start: it lasted nothing
            step.end()  # ended once only
            outer.record_exception(ValueError("what the user sent"))
            raise KeyError("what the user sent")
    await tel.close()
    step_rec, outer_rec = wire.unpack((await sub.next_msg(timeout=5)).data)
    assert (step_rec["name"], outer_rec["name"]) == ("step", "outer")
    assert step_rec["parent_id"] == outer_rec["span_id"] and outer_rec["parent_id"] == ""
    assert step_rec["trace_id"] == outer_rec["trace_id"]
    assert (step_rec["start_us"], step_rec["end_us"]) == (5_000, 5_000)
    assert step_rec["attributes"] == {
        "ak.step": 2,
        "ak.session_id": "ses_1",
        "ak.project": "prj_1",
        "ak.deployment_id": "dep_1",
    }
    assert outer_rec["service"] == "ak-test" and "dropped" not in outer_rec["attributes"]
    assert (outer_rec["status"], outer_rec["status_description"]) == ("ERROR", "KeyError")
    assert outer_rec["attributes"]["error.type"] == "KeyError"
    assert [(e["name"], e["attributes"]) for e in outer_rec["events"]] == [
        ("exception", {"exception.type": "ValueError"})
    ]
    assert "what the user sent" not in str([step_rec, outer_rec])
    # The exporters see the same spans, as the OpenTelemetry SDK's.
    spans = exported.get_finished_spans()
    assert [f"{s.context.span_id:016x}" for s in spans] == [
        step_rec["span_id"],
        outer_rec["span_id"],
    ]
    assert spans[1].resource.attributes["service.name"] == "ak-test"
    assert spans[1].status.description == "KeyError" and spans[0].parent == spans[1].context
    await nc.close()
