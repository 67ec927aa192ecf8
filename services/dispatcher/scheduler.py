"""Cron ticks: each schedule trigger's due tick becomes an event on ``AK_EVENTS``.

Every dispatcher runs this loop. A tick's event id and ``Nats-Msg-Id`` derive from
(trigger, tick time), so when several dispatchers publish the same tick JetStream keeps one.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from akcore import bus, cron, eventdata, ids, subjects, tracing, wire
from akcore.datakey import Keyring
from akcore.errors import AKError
from nats.aio.client import Client

log = logging.getLogger(__name__)

REFRESH = 2.0  # seconds between reloads of the schedule triggers (a deleted one stops then)
LONG_WAIT = 20.0  # seconds without the store's answer before the wait is worth a warning


def tick_event(trigger: dict[str, Any], at: datetime) -> wire.Event:
    key = f"tick:{trigger['trigger_id']}:{int(at.timestamp())}"
    ms = int(at.timestamp() * 1000)
    return wire.Event(
        event_id=ids.derived_id("evt", ms, key),
        project_id=trigger["project_id"],
        destination_id=trigger["trigger_id"],
        event_type="tick",
        data={},
        memo={"trigger_id": trigger["trigger_id"], "schedule": trigger["schedule"]},
        created_at_us=ms * 1000,
    )


class Scheduler:
    def __init__(
        self, nc: Client, telemetry: tracing.Telemetry, keys: Keyring | None = None
    ) -> None:
        self.nc, self.tel = nc, telemetry
        self.keys = keys  # a tick's memo rests sealed, as every event's (akcore.eventdata)
        self.next_fire: dict[tuple[str, str], datetime] = {}  # (trigger id, schedule) -> time
        self.triggers: list[dict[str, Any]] = []
        self.away_since: float | None = None  # when the store stopped answering
        self.warned = False

    async def refresh(self) -> None:
        self.triggers = await bus.store_call(self.nc, "schedule.list", {})
        now = datetime.now(UTC)
        keys = set()
        for t in self.triggers:
            key = (t["trigger_id"], t["schedule"])
            keys.add(key)
            if key not in self.next_fire:
                try:
                    self.next_fire[key] = cron.parse(t["schedule"]).next_after(now)
                except cron.CronError as e:
                    log.warning("trigger %s: bad schedule: %s", t["trigger_id"], e)
        for gone in set(self.next_fire) - keys:
            del self.next_fire[gone]

    async def fire_due(self) -> None:
        now = datetime.now(UTC)
        pub = bus.publisher(self.nc)
        for t in self.triggers:
            key = (t["trigger_id"], t["schedule"])
            at = self.next_fire.get(key)
            if at is None or at > now:
                continue
            ev = tick_event(t, at)
            attrs = {"ak.project": ev.project_id, "ak.trigger_id": t["trigger_id"]}
            with self.tel.span("schedule tick", attributes={**attrs, "ak.event_id": ev.event_id}):
                await pub.publish(
                    subjects.event_subject(ev.project_id, ev.event_id),
                    wire.encode(eventdata.sealed(ev, self.keys) if self.keys else ev),
                    headers=tracing.inject({subjects.HDR_MSG_ID: ev.event_id}),
                )
            self.next_fire[key] = cron.parse(t["schedule"]).next_after(max(at, now))

    async def run(self, stop: asyncio.Event) -> None:
        last_refresh = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                if loop.time() - last_refresh > REFRESH:
                    await self.refresh()
                    last_refresh = loop.time()
                    self.away_since, self.warned = None, False
                await self.fire_due()
            except AKError as e:
                self._waiting(loop.time(), e)
            except Exception:
                log.exception("scheduler failed, retrying")
            await asyncio.sleep(0.2)

    def _waiting(self, now: float, e: AKError) -> None:
        """The store did not answer: normal while it starts (or migrates), so the wait is
        quiet until it is long, then said once."""
        if self.away_since is None:
            self.away_since = now
        waited = now - self.away_since
        if waited >= LONG_WAIT and not self.warned:
            log.warning("scheduler: no schedule triggers for %.0f s so far: %s", waited, e)
            self.warned = True
        else:
            log.debug("scheduler: waiting for the store: %s", e)
