"""Attacks on ingress outside the webhook body limit (issue 16): a huge header, thousands of
headers, a huge /api body, connections that send one byte at a time, a connection cap, and
JSON nested too deep. Each is answered with a clear refusal (or, for deep JSON, taken as
text) and the stack keeps serving. Raw sockets, so the client sends exactly the attack."""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from tests.helpers import Stack, start_stack, write_project

REQUEST_TIMEOUT = 3
IDLE_TIMEOUT = 2
MAX_CONNECTIONS = 350
LINGER = 1  # ak_ingress.protocol.LINGER

MANIFEST = """\
version: v1
project:
  name: limits
  triggers:
    - name: hook
      webhook: {}
      call: h.py:on_hook
"""

CODE = """\
def on_hook(event):
    body = event.data.body
    print("json:", body.json, "text:", len(body.text or ""))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(
        tmp_path_factory.mktemp("limits"),
        {
            "AK_HTTP__REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
            "AK_HTTP__IDLE_TIMEOUT": str(IDLE_TIMEOUT),
            "AK_HTTP__MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        },
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def hook(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    proj = write_project(tmp_path_factory.mktemp("p"), {"autokitteh.yaml": MANIFEST, "h.py": CODE})
    return stack.deploy(proj)[1]


def _connect(stack: Stack) -> socket.socket:
    host, port = stack.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _send_all(sock: socket.socket, chunks: Iterator[bytes]) -> threading.Thread:
    """Sends in the background until done or the server stops reading."""

    def go() -> None:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the one answer on ``sock`` (read until it closes)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _events(stack: Stack) -> list[dict[str, str]]:
    out = stack.ak("event", "list", "-p", "limits", "-j", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def _only_this_event_is_stored(stack: Stack, hook: str, before: int) -> None:
    """A good request after the refused ones is stored, and it is the only new event."""
    status, headers, _ = stack.request("POST", hook, b"{}")
    assert status == 202
    deadline = time.monotonic() + 20
    while headers["autokitteh-event-id"] not in {e["event_id"] for e in _events(stack)}:
        assert time.monotonic() < deadline, "the good event never reached the store"
        time.sleep(0.2)
    assert len(_events(stack)) == before + 1


def _ingress_peak_rss(stack: Stack) -> int:
    (pid,) = stack.pids("ingress")
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1]) * 1024


def test_a_7mb_header_gets_431_and_is_never_stored(stack: Stack, hook: str) -> None:
    before = len(_events(stack))
    head = f"POST {hook} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Big: ".encode()
    with _connect(stack) as sock:
        _send_all(sock, iter([head, *([b"a" * 65536] * 112), b"\r\n\r\n{}"]))
        status, headers, body = _response(sock)
    assert status == 431 and headers["connection"] == "close"
    assert b"headers are over 65536 bytes (AK_HTTP__MAX_HEADER_BYTES)" in body
    _only_this_event_is_stored(stack, hook, before)


def test_headers_just_under_the_limit_arriving_slowly_are_served(stack: Stack, hook: str) -> None:
    """The head is counted as it arrives; one under the limit, in 1 KiB reads, is served."""
    head = f"POST {hook} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Big: ".encode()
    head += b"a" * (60_000 - len(head)) + b"\r\n\r\n{}"
    with _connect(stack) as sock:
        for i in range(0, len(head), 1024):
            sock.sendall(head[i : i + 1024])
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 202 ") and data.count(b"HTTP/1.1 200 OK") == 1


def test_30k_headers_get_431_and_are_never_stored(stack: Stack, hook: str) -> None:
    before = len(_events(stack))
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(30_000))
    with _connect(stack) as sock:
        _send_all(sock, iter([f"POST {hook} HTTP/1.1\r\nHost: x\r\n".encode(), many, b"\r\n"]))
        status, _, body = _response(sock)
    assert status == 431
    assert b"more than 200 headers (AK_HTTP__MAX_HEADERS)" in body
    _only_this_event_is_stored(stack, hook, before)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_400mb_api_body_gets_413_without_filling_memory(stack: Stack, declared: bool) -> None:
    peak = _ingress_peak_rss(stack)
    size, mib = 400 * 1024 * 1024, b"\x00" * (1024 * 1024)
    auth = f"Host: x\r\nAuthorization: Bearer {stack.token}\r\n"
    if declared:
        head = f"POST /api/project.get HTTP/1.1\r\n{auth}Content-Length: {size}\r\n\r\n"
        chunks = [mib] * 400
    else:
        head = f"POST /api/project.get HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
        chunks = [b"100000\r\n" + mib + b"\r\n"] * 400 + [b"0\r\n\r\n"]
    with _connect(stack) as sock:
        sender = _send_all(sock, iter([head.encode(), *chunks]))
        status, headers, body = _response(sock)
        sender.join(timeout=30)
    assert status == 413 and headers["content-type"] == "application/msgpack"
    reply = msgpack.unpackb(body)
    assert reply["error_kind"] == "invalid_argument"
    assert "over the 8388608 byte limit of the API (AK_HTTP__MAX_API_BODY)" in reply["error"]
    assert not sender.is_alive(), "ingress kept reading the body"
    assert _ingress_peak_rss(stack) - peak < 32 * 1024 * 1024
    assert stack.ak("project", "list").returncode == 0  # still serving


def test_connections_sending_a_byte_at_a_time_are_closed_in_time(stack: Stack, hook: str) -> None:
    """300 connections, each sending its request one byte a second (the attack sent one every
    5 s; a byte a second shows that the request limit acts, not the idle one): every one gets
    408 and is closed once REQUEST_TIMEOUT has passed since its first byte."""
    with contextlib.ExitStack() as opened:
        socks = [opened.enter_context(_connect(stack)) for _ in range(300)]
        answers, closed = _send_a_byte_a_second_until_closed(socks, f"POST {hook} HTTP/1.1\r\n")
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} connections still open"
    assert max(closed.values()) <= REQUEST_TIMEOUT + LINGER + 5
    assert min(closed.values()) >= REQUEST_TIMEOUT - 0.5
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers)
    assert b"did not arrive whole within 3 s (AK_HTTP__REQUEST_TIMEOUT)" in answers[0]


def _send_a_byte_a_second_until_closed(
    socks: list[socket.socket], start_line: str
) -> tuple[list[bytes], dict[socket.socket, float]]:
    """What each connection got, and when (seconds from the start) each was closed."""
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    for s in socks:
        s.sendall(start_line.encode())
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    answers = {s: bytearray() for s in socks}
    closed: dict[socket.socket, float] = {}
    deadline = start + REQUEST_TIMEOUT + LINGER + 10
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for s in socks:
            if s not in closed:
                with contextlib.suppress(OSError):  # it is closing: the read below sees it
                    s.send(b"X")
        for key, _ in sel.select(timeout=1.0):  # waits on the closes, a second at most
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            answers[s] += chunk
            if not chunk:
                closed[s] = time.monotonic() - start
                sel.unregister(s)
    sel.close()
    return [bytes(answers[s]) for s in socks], closed


def test_a_connection_that_sends_nothing_is_closed_when_idle(stack: Stack) -> None:
    with _connect(stack) as sock:
        start = time.monotonic()
        assert sock.recv(1) == b""  # waits for the server to close it
    assert IDLE_TIMEOUT - 0.5 <= time.monotonic() - start <= IDLE_TIMEOUT + 3


def test_requests_beyond_the_connection_limit_get_503(stack: Stack, hook: str) -> None:
    with contextlib.ExitStack() as opened:
        for _ in range(MAX_CONNECTIONS):
            opened.enter_context(_connect(stack))
        with _connect(stack) as sock:
            sock.sendall(
                f"POST {hook} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode()
            )
            status, headers, body = _response(sock)
        assert status == 503 and headers["retry-after"] == "1"
        assert b"350 connections open, its limit (AK_HTTP__MAX_CONNECTIONS)" in body
    deadline = time.monotonic() + 10
    while stack.request("POST", hook, b"{}")[0] != 202:  # the server sees the closes
        assert time.monotonic() < deadline, "still refused after the connections closed"
        time.sleep(0.1)


def test_json_nested_100k_deep_is_kept_as_text(stack: Stack, hook: str) -> None:
    body = b"[" * 100_000
    status, headers, _ = stack.request("POST", hook, body, {"Content-Type": "application/json"})
    assert status == 202
    sid = stack.session_of("limits", headers["autokitteh-event-id"])
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout
    assert prints == "json: None text: 100000\n"


@pytest.mark.parametrize("target", ["127.0.0.1:22", "example.com:443", "http://[::1/x"])
def test_a_request_target_no_url_parser_takes_gets_400(stack: Stack, target: str) -> None:
    """A CONNECT (its target is a host and port) and targets httptools reads as a request
    but cannot parse as a URL: the connection was dropped without an answer and ingress
    logged a "Fatal error on transport" traceback for each (an adversarial review, 2026-12-07)."""
    method = "GET" if target.startswith("http") else "CONNECT"
    for earlier in (False, True):  # on a new connection, and after an answered request
        with _connect(stack) as sock:
            if earlier:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b'{"status":"ok"}'):
                    answer += sock.recv(65536)
            sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, _, body = _response(sock)
        assert status == 400, stack.output()[-3000:]
        assert body == b"Bad Request: the request is not valid HTTP/1.1\n"
    assert "Fatal error on transport" not in stack.output()
    assert stack.request("GET", "/healthz")[0] == 200
