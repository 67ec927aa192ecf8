"""`ak up` waiting for its stack: what answers on the HTTP address is not always the stack."""

from __future__ import annotations

import socket
import threading

import pytest
from ak_cli import up
from akcore.errors import AKError


def test_a_port_answered_by_something_else_is_said_once() -> None:
    """Another program (here one greeting as nats-server does) took the HTTP port before
    the ingress could: `ak up` says so and stops, not a traceback of http.client."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def greet() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b'INFO {"server_id":"x","port":%d}\r\n' % port)
                conn.recv(4096)

        threading.Thread(target=greet, daemon=True).start()
        with pytest.raises(AKError, match=f"something else answers on http://127.0.0.1:{port}"):
            up._wait_ready(f"http://127.0.0.1:{port}", [], [])
