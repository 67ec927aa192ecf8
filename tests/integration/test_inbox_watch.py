"""A stop request sent while a runner was disconnected still reaches its session: after a
reconnect the runner's inbox watch looks at every inbox it did not read yet."""

from __future__ import annotations

import asyncio

from ak_runner.inbox import Inbox, InboxWatch
from akcore import bus, subjects, wire


async def test_a_stop_missed_while_away_is_read_after_a_reconnect(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    stops: list[str] = []
    sid = "ses_01m8cpgk96e6wakscbfn3064cx"
    inbox = Inbox(js, sid, set(), lambda reason, failed: stops.append(reason))
    # The stop is stored while the watch does not listen (as when the runner is away).
    stop = wire.InboxMessage(kind=wire.INBOX_STOP, reason="stopped by user")
    await bus.publisher(nc).publish(subjects.inbox_subject(sid), wire.encode(stop))
    watch = InboxWatch()
    await watch.watch(nc)
    watch.live[sid] = inbox
    assert not inbox.reading and not watch.heard_of(sid)  # nothing told the runner
    await watch.resync()  # what the runner does once reconnected
    async with asyncio.timeout(10):
        while not stops:
            await asyncio.sleep(0.01)
    assert stops == ["stopped by user"]
    assert not watch.heard_all_since(0.0)  # sessions queued before the gap must look
    await inbox.close()
    await nc.close()
