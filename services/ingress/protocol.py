"""The HTTP/1.1 connection ingress serves: uvicorn's httptools protocol with limits on what
one client may take (``HttpLimits``).

uvicorn alone reads a request head of any size and any number of headers, gives a request
all the time it wants to arrive, keeps a new connection that sends nothing open for ever and
takes any number of connections. Here, before the app sees the request:

- a head over ``max_header_bytes`` or with more than ``max_headers`` headers gets 431;
  the head is counted as it arrives, so at most the limit and one read of it is held;
  so are a chunked body's trailers (headers after its last chunk), which httptools joins
  with ``bytes +=`` on every read: one connection sending an endless trailer held the event
  loop for seconds at a time (quadratic copying) until the request timeout;
- a request (head and body) that has not fully arrived ``request_timeout`` s after its first
  byte gets 408 (or, when an answer is already on its way on that connection, the connection
  is closed); time the server itself does not read (a pipelined request waiting its turn)
  does not count;
- a connection waits at most ``idle_timeout`` s for its first request and between requests;
- a request on a connection beyond ``max_connections`` gets 503;
- a connection with ``MAX_PIPELINED`` requests waiting behind the one being answered is
  closed: uvicorn queues a request cycle for every request it has read and reads again
  after each answer, so connections that sent megabytes of tiny pipelined requests and
  read no answer grew ingress by gigabytes.

A refused connection is answered, half-closed, and read (and dropped) for ``LINGER`` s before
it is closed: closing at once while the client still sends would reset the connection and
the client could lose the answer.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from typing import Any, ClassVar

import httptools
from akcore.config import (
    ENV_HTTP_MAX_CONNECTIONS,
    ENV_HTTP_MAX_HEADER_BYTES,
    ENV_HTTP_MAX_HEADERS,
    ENV_HTTP_REQUEST_TIMEOUT,
    HttpLimits,
)
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

LINGER = 1.0
# Requests that may wait on one connection behind the one being answered (HTTP/1.1
# pipelining: rare, and a few deep, from clients that use it).
MAX_PIPELINED = 64


class Refused(Exception):
    """A request over a limit: the answer it gets, and then its connection is closed."""

    def __init__(self, status: int, message: str, headers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers

    def response(self) -> bytes:
        body = (self.message + "\n").encode()
        head = [
            "content-type: text/plain; charset=utf-8",
            f"content-length: {len(body)}",
            "connection: close",
            *self.headers,
        ]
        return (
            STATUS_LINE[self.status] + "".join(h + "\r\n" for h in head).encode() + b"\r\n" + body
        )


def head_too_large(limits: HttpLimits) -> Refused:
    return Refused(
        431,
        f"Request Header Fields Too Large: the request line and headers are over "
        f"{limits.max_header_bytes} bytes ({ENV_HTTP_MAX_HEADER_BYTES}); "
        "send fewer or smaller headers",
    )


def trailers_too_large(limits: HttpLimits) -> Refused:
    return Refused(
        431,
        f"Request Header Fields Too Large: the request's trailers (headers after its chunked "
        f"body) are over {limits.max_header_bytes} bytes ({ENV_HTTP_MAX_HEADER_BYTES}); send "
        "fewer or smaller trailers",
    )


def too_many_headers(limits: HttpLimits) -> Refused:
    return Refused(
        431,
        f"Request Header Fields Too Large: the request has more than {limits.max_headers} "
        f"headers ({ENV_HTTP_MAX_HEADERS}); send fewer headers",
    )


def too_slow(limits: HttpLimits) -> Refused:
    return Refused(
        408,
        f"Request Timeout: the request did not arrive whole within {limits.request_timeout} s "
        f"({ENV_HTTP_REQUEST_TIMEOUT}); send it again, faster",
    )


def too_many_connections(limits: HttpLimits) -> Refused:
    return Refused(
        503,
        f"Service Unavailable: this server has {limits.max_connections} connections open, its "
        f"limit ({ENV_HTTP_MAX_CONNECTIONS}); send the request again later",
        ("retry-after: 1",),
    )


def too_many_pipelined() -> Refused:
    # (Never sent: the answers of the requests before it are due first; the connection
    # is closed.)
    return Refused(
        503, f"Service Unavailable: more than {MAX_PIPELINED} requests pipelined on one connection"
    )


def not_http() -> Refused:
    return Refused(400, "Bad Request: the request is not valid HTTP/1.1")


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``limits`` (give a subclass its own: ``with_limits``)."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.idle_timeout
        self._in_head = False  # a request has begun and its head has not all arrived
        self._in_body = False  # its head has arrived (the app has it), its body not all
        self._heads = 0  # requests begun on this connection
        self._head_bytes = 0  # bytes of reads that continued the unfinished head
        # A chunk's header has come and no byte of its data: the last (empty) chunk's
        # trailers are being read, or a chunk's data has not arrived yet.
        self._chunk_empty = False
        self._body_bytes = 0  # body bytes of this connection parsed so far
        self._trailer_bytes = 0  # bytes of reads that continued the unfinished trailers
        self._deadline: TimerHandle | None = None
        self._refused = False

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[LimitedProtocol]:
        return type("LimitedProtocol", (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn waits for a first request for ever; this waits as long as between requests.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: what still arrives is dropped
        self._unset_keepalive_if_required()
        heads, in_head, body_bytes = self._heads, self._in_head, self._body_bytes
        in_trailers = self._in_body and self._chunk_empty
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no WebSockets here: served as a plain request
        except httptools.HttpParserError as e:
            self._refuse(e.__context__ if isinstance(e.__context__, Refused) else not_http())
            return
        # A read that only continued an unfinished head counts whole; one that began a head
        # counts when it completes (on_headers_complete), so the count never takes the
        # bytes of another request for this one's.
        if in_head and self._in_head and heads == self._heads:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(head_too_large(self.limits))
        elif self._in_body and self._chunk_empty and heads == self._heads:
            # Trailers: a read spent on them whole counts whole; one where they (or a
            # chunk's header) began counts its bytes that were not body.
            body = self._body_bytes - body_bytes
            if in_trailers and not body:
                self._trailer_bytes += len(data)
            else:
                self._trailer_bytes = len(data) - body
            if self._trailer_bytes > self.limits.max_header_bytes:
                self._refuse(trailers_too_large(self.limits))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._heads += 1
        self._in_head, self._head_bytes = True, 0
        self._chunk_empty, self._trailer_bytes = False, 0
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.limits.request_timeout, self._too_slow)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.limits.max_headers:
            raise too_many_headers(self.limits)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.limits.max_header_bytes:
            raise head_too_large(self.limits)
        if len(self.connections) > self.limits.max_connections:
            raise too_many_connections(self.limits)
        if len(self.pipeline) >= MAX_PIPELINED:
            raise too_many_pipelined()
        self._in_head = False
        super().on_headers_complete()  # (raises for a target that is no URL: a CONNECT's)
        self._in_body = True  # only now: the request has its cycle (``_may_answer``)

    def on_body(self, body: bytes) -> None:
        self._chunk_empty = False
        self._body_bytes += len(body)
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._chunk_empty = True

    def on_chunk_complete(self) -> None:
        self._chunk_empty = False

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel_deadline()
        super().on_message_complete()

    def _too_slow(self) -> None:
        if self.flow.read_paused:  # not read by us (it waits behind an answer): not its delay
            self._deadline = self.loop.call_later(self.limits.request_timeout, self._too_slow)
            return
        self._deadline = None
        self._refuse(too_slow(self.limits))

    def _refuse(self, refusal: Refused) -> None:
        self._refused = True
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        if self.transport.is_closing():
            return
        if not self._may_answer():  # an answer is due on this connection: this would pass for it
            self.transport.close()
            return
        self.transport.write(refusal.response())
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)

    def _may_answer(self) -> bool:
        """Whether nothing has been, or is being, answered for the refused request and no
        earlier request's answer is still due. A refused body's app gets a disconnect."""
        if self.pipeline:  # requests waiting their turn: their answers come first
            return False
        cycle = self.cycle
        if not self._in_body:  # the refused request has no cycle: ``cycle`` is an earlier one's
            return cycle is None or cycle.response_complete
        if cycle.response_started:
            return False
        cycle.disconnected = True  # what the app answers later is dropped
        cycle.message_event.set()
        return True

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
