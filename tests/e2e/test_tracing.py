"""Traces from the running stack: OTLP/HTTP export to a real receiver, and `ak session trace`."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.helpers import Stack, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: traced
  triggers:
    - name: hook
      webhook: {}
      call: h.py:on_hook
    - name: spawn
      webhook: {}
      call: h.py:parent
"""

CODE = """\
import autokitteh


@autokitteh.activity
def double(n):
    return n * 2


def on_hook(event):
    print(double(double(1)))


def parent(event):
    child = autokitteh.start("h.py:child", {"n": 1})
    print("started", child)


def child(event):
    print("child", event.data.n)
"""


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on loopback: keeps (service name, span) pairs."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, Any]] = []
        self.paths: set[str] = set()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        req = ExportTraceServiceRequest.FromString(body)
        self.server.paths.add(self.path)
        for rs in req.resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                self.server.spans += [(attrs.get("service.name", ""), sp) for sp in ss.spans]
        out = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def traced_stack(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    host, port = receiver.server_address[:2]
    stack = start_stack(
        tmp_path_factory.mktemp("traced"),
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{host}:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def session_id(traced_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    proj = write_project(tmp_path_factory.mktemp("p"), {"autokitteh.yaml": MANIFEST, "h.py": CODE})
    path = traced_stack.deploy_paths(proj)["hook"]
    status, headers, _ = traced_stack.request("POST", path, b"{}")
    assert status == 202
    sid = traced_stack.session_of("traced", headers["autokitteh-event-id"])
    assert traced_stack.wait_session(sid)["state"] == "COMPLETED"
    return sid


def test_spans_reach_an_otlp_http_receiver(receiver: Receiver, session_id: str) -> None:
    def session_trace() -> set[bytes]:
        return {
            sp.trace_id
            for _, sp in receiver.spans
            if any(
                a.key == "ak.session_id" and a.value.string_value == session_id
                for a in sp.attributes
            )
        }

    deadline = time.monotonic() + 15
    while True:
        traces = session_trace()
        services = {svc for svc, sp in receiver.spans if sp.trace_id in traces}
        if len(services) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert receiver.paths == {"/v1/traces"}
    assert len(traces) == 1
    assert services == {"ak-ingress", "ak-dispatcher", "ak-runner", "ak-store"}
    names = {sp.name for _, sp in receiver.spans if sp.trace_id in traces}
    assert {"POST /webhooks/{slug}", "dispatch", "session h.py:on_hook", "activity double"} <= names


EXPECTED_TREE = [
    ("POST /webhooks/{slug}", "ak-ingress"),
    ("├── webhook.lookup", "ak-store"),
    ("└── dispatch", "ak-dispatcher"),
    ("    ├── dispatch.targets", "ak-store"),
    ("    └── session h.py:on_hook", "ak-runner"),
    ("        ├── build.get", "ak-store"),
    ("        ├── session.env", "ak-store"),
    ("        ├── activity double #1", "ak-runner"),
    ("        └── activity double #2", "ak-runner"),
]


def test_ak_session_trace_prints_the_tree(traced_stack: Stack, session_id: str) -> None:
    deadline = time.monotonic() + 10
    while True:  # spans reach the store a moment after the session ends
        out = traced_stack.ak("session", "trace", session_id, check=True).stdout.splitlines()
        if len(out) == 1 + len(EXPECTED_TREE) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert re.fullmatch(r"trace [0-9a-f]{32}", out[0])
    line_re = re.compile(r"(.*?\S)\s{2,}(ak-\w+)\s+\+\d+\.\d\d m?s\s+\d+\.\d\d m?s")
    rows = [line_re.fullmatch(line) for line in out[1:]]
    assert all(rows), out
    assert [(r.group(1), r.group(2)) for r in rows if r] == EXPECTED_TREE

    spans = traced_stack.spans(session_id)
    assert len(spans) == len(EXPECTED_TREE)
    session = next(s for s in spans if s["name"] == "session h.py:on_hook")
    assert session["attributes"]["ak.session_id"] == session_id
    assert session["attributes"]["ak.state"] == "COMPLETED"
    assert all(s["end_us"] >= s["start_us"] for s in spans)


def test_a_child_session_joins_its_parents_trace(traced_stack: Stack, session_id: str) -> None:
    # (session_id: the project deployed, whatever test ran first)
    path = json.loads(
        traced_stack.ak("trigger", "get", "spawn", "-p", "traced", "-j", check=True).stdout
    )["webhook_slug"]
    status, headers, _ = traced_stack.request("POST", f"/webhooks/{path}", b"{}")
    assert status == 202
    parent = traced_stack.session_of("traced", headers["autokitteh-event-id"])
    assert traced_stack.wait_session(parent)["state"] == "COMPLETED"
    child = traced_stack.ak("session", "prints", parent, "-n", check=True).stdout.split()[-1]
    assert traced_stack.wait_session(child)["state"] == "COMPLETED"
    deadline = time.monotonic() + 10
    while True:
        spans = traced_stack.spans(child)
        names = {s["name"]: s for s in spans}
        if "session h.py:child" in names or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len({s["trace_id"] for s in spans}) == 1
    start = names["start"]
    assert start["attributes"]["ak.session_id"] == parent
    assert names["session h.py:child"]["parent_id"] == start["span_id"]
    assert names["session h.py:parent"]["span_id"] == start["parent_id"]


def test_trace_of_an_unknown_session(traced_stack: Stack, tmp_path: Path) -> None:
    res = traced_stack.ak("session", "trace", "ses_00000000000000000000000000")
    assert res.returncode == 44
    assert res.stderr == 'Error: session "ses_00000000000000000000000000" not found\n'
