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


@pytest.mark.parametrize("description", ["Batch Completed", "Message Size Exceeds MaxBytes"])
async def test_the_end_of_a_request_with_a_byte_limit_is_no_refusal(
    nats_url: str, caplog: pytest.LogCaptureFixture, description: str
) -> None:
    """A request with a byte limit that delivered its batch ends with a 409 saying so:
    taken for a refusal, every runner paused its lane for a second (the compose stack's
    runners logged `refused a pull request (409 Batch Completed)` again and again)."""
    from nats.aio.msg import Msg

    await _stream_of_big_messages(nats_url, 0)
    nc = await bus.connect(nats_url, "t")
    for timed in (False, True):
        puller = await bus.Puller.of(nc, "BIG", "c", timed=timed)
        caplog.set_level(logging.WARNING, logger="akcore.bus")
        await puller.ask(2)
        assert puller.asking
        sid = next(iter(puller._requests)) if timed else puller._sub._id
        end = Msg(
            nc,
            subject=puller._reply,
            reply="",
            data=b"",
            _sid=sid,
            headers={"Status": "409", "Description": description},
        )
        await puller._on_msg(end)
        assert not puller.asking  # over: the next request goes out at once
        loop = asyncio.get_running_loop()
        assert puller._paused_until <= loop.time()
        assert "refused" not in caplog.text
        await puller.close()
    await nc.close()
