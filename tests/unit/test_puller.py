"""``bus.Puller``: what one pull request may deliver at once is bounded in bytes."""

from __future__ import annotations

import asyncio
import logging

import pytest
from akcore import bus
from nats.js.api import AckPolicy, ConsumerConfig

BIG = 900 * 1024  # (under the test server's message limit)


async def _stream_of_big_messages(nats_url: str, count: int) -> None:
    nc = await bus.connect(nats_url, "writer")
    js = nc.jetstream()
    await js.add_stream(name="BIG", subjects=["big.>"])
    await js.add_consumer(
        "BIG", ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1)
    )
    for n in range(count):
        await js.publish(f"big.{n}", bytes(BIG))
    await nc.close()


async def test_a_request_delivers_its_bytes_worth_and_the_next_goes_on(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """64 events of 1.5 MB asked for at once overfilled the server's buffer for a busy
    dispatcher (64 MiB): it was cut off as a slow consumer. A request now delivers at most
    ``MAX_BYTES``; its end (409, MaxBytes) is no refusal: the next asks at once."""
    await _stream_of_big_messages(nats_url, 20)
    nc = await bus.connect(nats_url, "t")
    nc._max_payload = BIG + 4096  # (a server whose messages are this large at most)
    puller = await bus.Puller.of(nc, "BIG", "c")
    puller.MAX_BYTES = 4 * BIG + BIG // 2
    caplog.set_level(logging.WARNING, logger="akcore.bus")
    await puller.ask(64)
    async with asyncio.timeout(30):  # (a request that waits for more ends in 5 s)
        while puller.asking:
            await asyncio.sleep(0.01)
    assert 1 <= puller.ready <= 4  # what the one request delivered
    taken = len(puller.take_ready())
    while taken < 20:  # the rest, in requests of their own
        batch = await puller.take(64, timeout=10)
        assert batch, "a request delivered nothing"
        taken += len(batch)
    assert "refused" not in caplog.text
    await puller.close()
    await nc.close()


async def test_a_message_over_the_byte_limit_is_still_taken(nats_url: str) -> None:
    """A server whose messages are larger than it says (its limit lowered since they were
    stored): a request meets one over its byte limit and delivers nothing; the next asks
    without a limit, so the consumer does not stop at that message for good."""
    await _stream_of_big_messages(nats_url, 3)
    nc = await bus.connect(nats_url, "t")
    nc._max_payload = 1024  # (what the server would say now)
    puller = await bus.Puller.of(nc, "BIG", "c")
    puller.MAX_BYTES = 2048
    got = []
    while len(got) < 3:
        batch = await puller.take(64, timeout=10)
        assert batch, "the consumer stopped at a message over the limit"
        got += batch
    await puller.close()
    await nc.close()
