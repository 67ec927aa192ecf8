"""``bus.flush``: once it returns, the server has the subscriptions made before it, so a
message another connection publishes then reaches them. A relay between the client and a
real nats-server splits the client's bytes at the worst place, deterministically: what the
client wrote after a PING waits until that PING's PONG has reached the client, and then
goes on only up to the next PING (the rest, until the test lets it go)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from akcore import bus
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

PING, PONG = b"PING\r\n", b"PONG\r\n"


class Relay:
    """Forwards one client connection to the server at ``target``, holding the client's
    bytes after each PING as the module says."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.held = b""
        self.pings = self.pongs = 0  # PINGs forwarded, PONGs delivered
        self.released = False
        self._upstream: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def serve(self) -> tuple[asyncio.Server, str]:
        server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        return server, f"nats://127.0.0.1:{port}"

    def release(self) -> None:
        self.released = True
        self._pump()

    def _pump(self) -> None:
        assert self._upstream is not None
        while self.held and self.pongs >= self.pings:
            at = self.held.find(PING)
            if at < 0 and not self.released:
                return
            end = len(self.held) if at < 0 else at + len(PING)
            self._upstream.write(self.held[:end])
            self.held = self.held[end:]
            self.pings += at >= 0
        if self.released and self.pongs >= self.pings:
            self._upstream.write(self.held)
            self.held = b""

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, self._upstream = await asyncio.open_connection(*self.target)

        async def from_client() -> None:
            while data := await reader.read(65536):
                assert b"PUB" not in data, "the relay only understands commands without payloads"
                self.held += data
                self._pump()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
                self.pongs += data.count(PONG)
                self._pump()

        self._tasks = [asyncio.create_task(from_client()), asyncio.create_task(to_client())]
        await asyncio.gather(*self._tasks, return_exceptions=True)
        writer.close()
        self._upstream.close()


@contextlib.asynccontextmanager
async def relayed(nats_url: str) -> AsyncIterator[tuple[Relay, Client]]:
    host, port = nats_url.rsplit("@", 1)[1].split(":")
    relay = Relay((host, int(port)))
    server, url = await relay.serve()
    credentials = nats_url.split("//", 1)[1].rsplit("@", 1)[0]
    nc = await bus.connect(url.replace("//", f"//{credentials}@"), "relayed")
    try:
        yield relay, nc
    finally:
        relay.release()
        await nc.close()
        for task in relay._tasks:
            task.cancel()
        server.close()


async def _heard_after(nats_url: str, flush: Callable[[Client], Awaitable[None]]) -> bool:
    """Whether a message another connection publishes right after ``flush`` reaches a
    subscription made just before it."""
    other = await bus.connect(nats_url, "publisher")
    async with relayed(nats_url) as (relay, nc):
        sub = await nc.subscribe("t.subject")
        await flush(nc)
        await other.publish("t.subject", b"hello")
        await bus.flush(other)  # (the server has routed it: to the subscription, or nowhere)
        relay.release()  # what the relay still held (a SUB the server never had) goes now
        try:
            heard = (await sub.next_msg(timeout=1)).data == b"hello"
        except NatsTimeout:  # (only ever waited out when the message was lost)
            heard = False
    await other.close()
    return heard


async def test_a_subscription_flushed_with_bus_flush_hears_the_next_message(nats_url: str) -> None:
    assert await _heard_after(nats_url, bus.flush)


async def test_the_clients_own_flush_can_return_before_the_server_has_the_subscription(
    nats_url: str,
) -> None:
    """Why ``bus.flush`` exists: with nats-py's flush the same sequence loses the message.
    If nats-py mends its flush, this fails, and ``bus.flush`` can be its flush again."""
    assert not await _heard_after(nats_url, lambda nc: nc.flush())
