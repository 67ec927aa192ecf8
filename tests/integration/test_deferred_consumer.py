"""The store makes each destination's consumer of AK_DEFERRED with its own configuration;
one of the name made otherwise (by a user that could once make consumers) is made again,
so that it cannot deliver deferred events elsewhere or hold them one at a time."""

from __future__ import annotations

import asyncio
import dataclasses

from akcore import bus, subjects
from nats.js.api import ConsumerConfig

from tests.conftest import connect_as

DEST = "trg_01m94q0000000000000000000a"


def test_a_deferred_consumer_not_as_the_store_makes_it_is_made_again(nats_url: str) -> None:
    async def main() -> None:
        store = await connect_as(nats_url, "store")
        js = store.jetstream()
        await bus.ensure_streams(js)
        name = subjects.deferred_consumer(DEST)
        assert await bus.make_deferred_consumer(js, DEST) == {"full": False}
        made = (await js.consumer_info(subjects.STREAM_DEFERRED, name)).config
        assert bus._as_made(made, bus.deferred_consumer(DEST))
        # Asked again: kept as it is (the same consumer, nothing delivered lost).
        await bus.make_deferred_consumer(js, DEST)
        again = await js.consumer_info(subjects.STREAM_DEFERRED, name)
        assert again.created == (await js.consumer_info(subjects.STREAM_DEFERRED, name)).created
        # One made as a push consumer delivering to another subject, or with a window of one.
        admin = await bus.connect(nats_url, "admin")
        ajs = admin.jetstream()
        want = bus.deferred_consumer(DEST)
        for forged in (
            dataclasses.replace(want, deliver_subject="ak.outcomes.evt_x"),
            dataclasses.replace(want, max_ack_pending=1),
        ):
            await ajs.delete_consumer(subjects.STREAM_DEFERRED, name)
            await ajs.add_consumer(subjects.STREAM_DEFERRED, forged)
            await bus.make_deferred_consumer(js, DEST)
            now = (await js.consumer_info(subjects.STREAM_DEFERRED, name)).config
            assert now.deliver_subject is None and now.max_ack_pending == want.max_ack_pending
        await admin.close()
        await store.close()

    asyncio.run(main())


def test_a_consumer_config_compares_as_made() -> None:
    want = bus.deferred_consumer(DEST)
    assert bus._as_made(dataclasses.replace(want), want)
    # What the server gives back (durations rounded), or another store's settings, will do.
    assert bus._as_made(dataclasses.replace(want, ack_wait=4.0999999), want)
    assert bus._as_made(dataclasses.replace(want, max_ack_pending=64, inactive_threshold=5), want)
    for forged in (
        dataclasses.replace(want, filter_subject="ak.deferred.>"),
        dataclasses.replace(want, deliver_subject="ak.outcomes.evt_x"),
        dataclasses.replace(want, max_ack_pending=1),
        dataclasses.replace(want, max_deliver=1),
        dataclasses.replace(want, headers_only=True),
        dataclasses.replace(want, ack_wait=0.001),
        dataclasses.replace(want, backoff=[0.01]),
        dataclasses.replace(want, pause_until="2099-01-01T00:00:00Z"),
        ConsumerConfig(name=want.name, durable_name=want.durable_name),
    ):
        assert not bus._as_made(forged, want), forged
