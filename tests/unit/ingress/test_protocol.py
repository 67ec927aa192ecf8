"""Ingress's HTTP connection limits (``LimitedProtocol``) on a real uvicorn server in this
process, with an app that answers the size of the body it read."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from ak_ingress.protocol import LimitedProtocol
from akcore.config import HttpLimits

LIMITS = HttpLimits(max_header_bytes=4096, request_timeout=20)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[int]:
    """A uvicorn server with ``LIMITS``; yields its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        _app,
        log_level="warning",
        lifespan="off",
        http=LimitedProtocol.with_limits(LIMITS),
        ws="none",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def _exchange(port: int, parts: list[bytes]) -> bytes:
    """Sends ``parts`` one write each (stopping if the server closes) and reads the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0)
        return await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()


CLOSE = b"\r\nConnection: close\r\n\r\n"  # (a head's end, asking the server to close)
CHUNKED = b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_a_trailer_over_the_head_limit_gets_431() -> None:
    """A chunked body's trailer that never ends: httptools joined its value with
    ``bytes +=`` on every read (quadratic, in the event loop), and nothing counted it, so
    one connection held every other client up for seconds until the request timeout."""
    trailer = [b"1\r\nx\r\n0\r\nX-Trailer: "] + [b"a" * 16384] * 64 + [b"\r\n\r\n"]
    async with _server() as port:
        answer = await _exchange(port, [CHUNKED, *trailer])
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"trailers (headers after its chunked body) are over 4096 bytes" in answer


async def test_a_chunked_body_with_small_trailers_is_served() -> None:
    """Chunks of any size (the body's bytes are not counted as trailers, nor are the
    chunks' own headers) and trailers under the limit are served."""
    chunks = [b"4000\r\n" + b"b" * 0x4000 + b"\r\n"] * 64  # 1 MiB in 16 KiB chunks
    small = [b"1\r\nc\r\n"] * 500  # and 500 one-byte chunks, one write each
    trailers = b"0\r\nX-One: 1\r\nX-Two: " + b"d" * 3000 + b"\r\n\r\n"
    async with _server() as port:
        answer = await _exchange(port, [CHUNKED, *chunks, *small, trailers])
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert answer.endswith(b"\r\n\r\n%d" % (64 * 0x4000 + 500))


async def _answers(port: int, requests: bytes) -> int:
    """How many answers the server gives to ``requests`` (sent at once) before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(requests)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    return data.count(b"HTTP/1.1 200 ")


async def test_a_connection_pipelining_too_many_requests_is_closed() -> None:
    """uvicorn queued a request cycle for every pipelined request it read, and read again
    after each answer: connections sending megabytes of tiny requests, reading no answer,
    grew ingress by gigabytes."""
    get = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    async with _server() as port:
        assert await _answers(port, get * 2000 + get.replace(b"\r\n\r\n", CLOSE)) <= 100
        # a few pipelined requests are served, every one
        assert await _answers(port, get * 49 + get.replace(b"\r\n\r\n", CLOSE)) == 50
