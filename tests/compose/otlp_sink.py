"""A minimal OTLP/HTTP trace receiver for the compose test: each span it receives becomes a
line ``service.name<TAB>span name<TAB>trace id`` in the file named by its argument."""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

OUT = sys.argv[1]


class Sink(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # /ready: the health check
        self.send_response(200)
        self.end_headers()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = ExportTraceServiceRequest.FromString(body)
        lines = []
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attrs.get("service.name", "?")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    lines.append(f"{service}\t{span.name}\t{span.trace_id.hex()}\n")
        with open(OUT, "a") as f:
            f.writelines(lines)
        data = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


ThreadingHTTPServer(("0.0.0.0", 4318), Sink).serve_forever()
