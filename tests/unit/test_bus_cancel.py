"""``bus.connect``'s client (``CancellableClient``) against a real nats-server.

A task cancelled while its publish waits for the client's flusher is cancelled: nats-py's
client swallows that cancel (``Client._flush_pending`` catches ``CancelledError``), so the
task went on as if nothing had happened (a heartbeat loop heartbeated on for ever, an
``asyncio.timeout`` did not fire). ``bus.connect``'s client raises it again, once the
message is sent. A message over the client's 2 MiB buffer always waits for the flusher,
which runs only after the publishing task has yielded: the cancel lands there, every time."""

from __future__ import annotations

import asyncio

from akcore import bus
from nats.aio.client import Client
from nats.aio.msg import Msg

BIG = b"x" * (3 << 20)  # (over nats-py's 2 MiB pending buffer: a forced flush)


async def _cancelled_mid_publish(nc: Client, subject: str) -> asyncio.Task[None]:
    publishing = asyncio.create_task(nc.publish(subject, BIG))
    await asyncio.sleep(0)  # it runs up to its wait for the flusher
    publishing.cancel()
    await asyncio.wait({publishing}, timeout=10)
    return publishing


async def test_a_publish_cancelled_while_it_waits_for_the_flusher_is_cancelled(
    nats_url: str,
) -> None:
    nc = await bus.connect(nats_url, "test")
    sub = await nc.subscribe("test.big")
    await bus.flush(nc)
    try:
        publishing = await _cancelled_mid_publish(nc, "test.big")
        assert publishing.cancelled()
        got = await sub.next_msg(timeout=10)  # what was sent stays sent
        assert len(got.data) == len(BIG)
    finally:
        await nc.close()


async def test_nats_py_still_swallows_the_cancel(nats_url: str) -> None:
    """When this fails, nats-py no longer swallows the cancel: ``CancellableClient`` can
    go (``bus.connect`` can use ``nats.connect`` again)."""
    nc = Client()
    await nc.connect(nats_url)
    try:
        publishing = await _cancelled_mid_publish(nc, "test.big")
        assert publishing.done() and not publishing.cancelled()
    finally:
        await nc.close()


async def test_a_flush_given_up_on_does_not_stop_the_client_reading(nats_url: str) -> None:
    """A flush cancelled (or timed out: nats-py cancels its future itself) while it waits
    for its PONG: when the PONG comes, the connection goes on reading (nats-py's read loop
    ended on it, and heard nothing until the stale-connection check reconnected, ~12 s)."""
    nc = await bus.connect(nats_url, "test")
    other = await bus.connect(nats_url, "other")
    try:
        sub = await nc.subscribe("test.after")
        await bus.flush(nc)
        flushing = asyncio.create_task(nc.flush(timeout=5))
        await asyncio.sleep(0)  # its PING is written; it waits for the PONG
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        await other.publish("test.after", b"x")
        await bus.flush(other)
        msg = await sub.next_msg(timeout=3)  # (read within milliseconds, when reading)
        assert msg.data == b"x"
    finally:
        await other.close()
        await nc.close()


async def test_a_request_cancelled_in_its_publish_leaves_no_reply_waiting(nats_url: str) -> None:
    """Cancelled in its publish (behind a message that waits for the flusher), a request
    to a responder that never answers leaves nothing in the client's reply map."""
    nc = await bus.connect(nats_url, "test")
    try:
        silent = await nc.subscribe("test.silent")  # takes requests, never answers

        async def echo(msg: Msg) -> None:
            await msg.respond(b"")

        await nc.subscribe("test.echo", cb=echo)
        await bus.flush(nc)
        await nc.request("test.echo", b"", timeout=5)  # (the client's reply subscription made)
        big = asyncio.create_task(nc.publish("test.big", BIG))
        asking = asyncio.create_task(nc.request("test.silent", b"q", timeout=60))
        await asyncio.sleep(0)  # both run up to their wait for the flusher
        asking.cancel()
        await asyncio.wait({asking, big}, timeout=10)
        assert asking.cancelled()
        await silent.next_msg(timeout=5)  # the request went out all the same
        assert not [f for f in nc._resp_map.values() if not f.done()]
    finally:
        await nc.close()
