"""Schedules with two dispatchers: each tick starts exactly one session."""

from __future__ import annotations

import asyncio

from ak_dispatcher.service import run as run_dispatcher
from ak_store.service import run as run_store
from akcore import bus, subjects, wire
from akcore.config import Settings
from nats.aio.client import Client
from nats.aio.msg import Msg

from .conftest import running

MANIFEST = """\
version: v1
project:
  name: ticks
  triggers:
    - name: every_second
      schedule: "* * * * * *"
      call: a.py:f
"""


async def test_each_tick_once_with_two_dispatchers(settings: Settings) -> None:
    async with (
        running(run_store, settings, "store"),
        running(run_dispatcher, settings, "dispatcher"),
        running(run_dispatcher, settings, "dispatcher"),
    ):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        res = await bus.store_call(nc, "manifest.apply", {"text": MANIFEST})
        bid = await bus.store_call(
            nc, "build.create", {"project": res["project_id"], "files": {"a.py": b""}}
        )
        did = await bus.store_call(
            nc, "deployment.create", {"project": res["project_id"], "build_id": bid}
        )
        await bus.store_call(nc, "deployment.activate", {"deployment_id": did})
        async with asyncio.timeout(60):  # a few ticks dispatched (a slow machine: later)
            while len(await _all(js, subjects.STREAM_JOBS, wire.Job)) < 3:
                await asyncio.sleep(0.2)
        refreshes = await _refreshes(nc)
        await bus.store_call(
            nc, "manifest.apply", {"text": "version: v1\nproject:\n  name: ticks\n"}
        )
        await refreshes.seen_by_all(2)  # both dispatchers read the schedules since
        events = await _all(js, subjects.STREAM_EVENTS, wire.Event)
        jobs = [j.event_id for j in await _all(js, subjects.STREAM_JOBS, wire.Job)]
        ticks = [e for e in events if e.event_type == "tick"]
        assert len({e.created_at_us for e in ticks}) == len(ticks)  # no tick twice
        assert len(set(jobs)) == len(jobs) >= 3  # one session per tick, never two
        assert set(jobs) <= {e.event_id for e in ticks}
        # Every tick started a session but the last ones, dispatched after the delete (how
        # many depends on the machine's speed): none was skipped in between.
        started = [e.event_id in jobs for e in sorted(ticks, key=lambda e: e.created_at_us)]
        assert started == sorted(started, reverse=True), started
        before = len(ticks)
        await refreshes.seen_by_all(2)  # each read them twice more, a tick's second apart
        after = [
            e for e in await _all(js, subjects.STREAM_EVENTS, wire.Event) if e.event_type == "tick"
        ]
        assert len(after) == before  # deleting the trigger stopped the ticks
        await nc.close()


class _Refreshes:
    """The schedule reloads of each dispatcher (told apart by their replies' inbox
    prefix, one per connection) heard since ``_refreshes``."""

    def __init__(self) -> None:
        self.by_client: dict[str, int] = {}
        self.heard = asyncio.Event()

    async def on_request(self, msg: Msg) -> None:
        client = msg.reply.rpartition(".")[0]
        self.by_client[client] = self.by_client.get(client, 0) + 1
        self.heard.set()

    async def seen_by_all(self, more: int, dispatchers: int = 2) -> None:
        """Until each of the ``dispatchers`` asked ``more`` times more than so far: the
        first ask after a change may have left before it; the second left after the first
        was answered and taken in."""
        start = dict(self.by_client)
        async with asyncio.timeout(60):
            while sum(n - start.get(c, 0) >= more for c, n in self.by_client.items()) < dispatchers:
                self.heard.clear()
                await self.heard.wait()


async def _refreshes(nc: Client) -> _Refreshes:
    refreshes = _Refreshes()
    await nc.subscribe(subjects.store_subject("schedule.list"), cb=refreshes.on_request)
    await nc.flush()
    return refreshes


async def _all(js, stream: str, cls):  # type: ignore[no-untyped-def]
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        out.append(wire.decode(cls, msg.data))
    return out
