"""A task cancelled while its publish waits for the client's flusher is cancelled: nats-py's
client swallows that cancel (``Client._flush_pending`` catches ``CancelledError``), so the
task went on as if nothing had happened (a heartbeat loop heartbeated on for ever, an
``asyncio.timeout`` did not fire). ``bus.connect``'s client raises it again, once the
message is sent. A message over the client's 2 MiB buffer always waits for the flusher,
which runs only after the publishing task has yielded: the cancel lands there, every time."""

from __future__ import annotations

import asyncio

from akcore import bus
from nats.aio.client import Client

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
