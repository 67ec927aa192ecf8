"""bus.Publisher: acknowledged JetStream publishes, with js.publish's errors."""

from __future__ import annotations

import asyncio
import time

import pytest
from akcore import bus
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, NoStreamResponseError


async def test_acknowledged_deduplicated_and_refused(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="T", subjects=["t.>"], duplicate_window=60))
    pub = bus.publisher(nc)
    assert bus.publisher(nc) is pub  # one per connection
    acks = await asyncio.gather(*(pub.publish(f"t.{i}", b"x") for i in range(50)))
    assert sorted(a["seq"] for a in acks) == list(range(1, 51))
    first = await pub.publish("t.a", b"y", headers={"Nats-Msg-Id": "m1"})
    again = await pub.publish("t.a", b"y", headers={"Nats-Msg-Id": "m1"})
    assert again["seq"] == first["seq"] and again.get("duplicate") is True
    assert (await js.stream_info("T")).state.messages == 51
    with pytest.raises(NoStreamResponseError):  # no stream takes the subject
        await pub.publish("nowhere.x", b"z")
    with pytest.raises(BadRequestError):  # the stream refuses it
        await pub.publish("t.b", b"z", headers={"Nats-Expected-Stream": "OTHER"})
    await nc.close()


async def test_an_unanswered_publish_times_out(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")

    async def silent(_: Msg) -> None:  # takes the message, never answers
        pass

    await nc.subscribe("silent.>", cb=silent)
    with pytest.raises(NatsTimeout):
        await bus.publisher(nc).publish("silent.x", b"z", timeout=0.2)
    await nc.close()


class Counting(bus.Publisher):
    """A publisher that counts its tries."""

    tries = 0

    async def publish(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.tries += 1
        return await super().publish(*args, **kwargs)


async def test_publish_within_waits_out_a_stream_that_cannot_take_it_yet(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    pub = Counting(nc)
    headers = {"Nats-Msg-Id": "e1"}
    task = asyncio.create_task(pub.publish_within(8.0, "w.1", b"x", headers))
    async with asyncio.timeout(5):
        while pub.tries < 1:  # the first try found no stream (as during a leader election)
            await asyncio.sleep(0.01)
    await js.add_stream(StreamConfig(name="W", subjects=["w.>"], max_msgs=1, discard="new"))
    ack = await task
    assert ack["seq"] == 1 and pub.tries >= 2
    # A stream at its limit is not waited for: nothing frees it in seconds.
    pub.tries = 0
    with pytest.raises(bus.APIError, match="maximum messages exceeded"):
        await pub.publish_within(8.0, "w.2", b"y", {"Nats-Msg-Id": "e2"})
    assert pub.tries == 1
    await nc.close()


async def test_publish_within_says_unanswered_when_any_try_went_unanswered(
    nats_url: str,
) -> None:
    """Its first try taken and never answered (it may be stored yet), its later ones
    refused: giving up must not read as "not stored" (ingress answers 504, not 503)."""
    nc = await bus.connect(nats_url, "t")

    async def silent(_: Msg) -> None:  # takes the message, never answers
        pass

    sub = await nc.subscribe("gone.>", cb=silent)

    class FirstUnanswered(Counting):
        async def publish(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            try:
                return await super().publish(*args, **kwargs)
            except NatsTimeout:
                await sub.unsubscribe()  # later tries: nobody takes the subject
                raise

    pub = FirstUnanswered(nc)
    with pytest.raises(asyncio.TimeoutError, match="a try went unanswered; the last"):
        await pub.publish_within(3.0, "gone.x", b"z", {"Nats-Msg-Id": "u1"})
    assert pub.tries >= 2
    await nc.close()


async def test_a_timed_puller_says_when_a_message_was_asked_for(nats_url: str) -> None:
    """A message delivered before the loop stalled is known as old after it: a runner must
    not take a job delivered before a stall for a fresh one (its lease runs from then)."""
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    puller = await bus.Puller.bind(nc, "runner", expires=5.0, timed=True)
    loop = asyncio.get_running_loop()
    assert await puller.take(1, timeout=0.1) == []  # its request is open now
    asked = loop.time()
    other = await bus.connect(nats_url, "other")
    await other.jetstream().publish("ak.jobs.x", b"job")  # delivered to the open request
    await other.close()
    time.sleep(0.5)  # the loop stalls with the job in its socket (on purpose)
    (msg,) = await puller.take(1, timeout=5)
    at = puller.requested_at(msg)  # (once per message)
    assert at <= asked  # not when it was taken: when it was asked for
    assert loop.time() - at >= 0.5
    await puller.close()
    await nc.close()
