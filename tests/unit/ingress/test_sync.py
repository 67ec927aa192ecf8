"""Sync webhook requests share one subscription per subject and each gets its own event's
dispatch report and first outcome."""

from __future__ import annotations

import asyncio

from ak_ingress.sync import SyncWaits
from akcore import bus, subjects, wire

from tests.conftest import connect_as


async def test_each_request_gets_its_own_events_report_and_first_outcome(nats_url: str) -> None:
    # Ingress's own user: the subscriptions must be within its permissions.
    ingress = await connect_as(nats_url, "ingress")
    other = await bus.connect(nats_url, "dispatcher and runner")
    try:
        waits = SyncWaits(ingress)
        async with waits.wait("evt_a") as a, waits.wait("evt_b") as b:
            for event, value in (("evt_x", "nobody's"), ("evt_b", "b's"), ("evt_a", "a's")):
                report = {"sessions": [f"ses_{event}"], "signaled": 0}
                await other.publish(subjects.dispatched_subject(event), wire.pack(report))
                await other.publish(subjects.outcome_subject(event), wire.pack({"value": value}))
            await other.publish(subjects.outcome_subject("evt_a"), wire.pack({"value": "later"}))
            await other.flush()
            assert (await asyncio.wait_for(a.dispatched, 10))["sessions"] == ["ses_evt_a"]
            assert await asyncio.wait_for(a.outcome, 10) == "a's"
            assert (await asyncio.wait_for(b.dispatched, 10))["sessions"] == ["ses_evt_b"]
            assert await asyncio.wait_for(b.outcome, 10) == "b's"
        # A request that ended is forgotten; the next one subscribes nothing new.
        subs = len(ingress._subs)
        async with waits.wait("evt_c") as c:
            await other.publish(subjects.outcome_subject("evt_c"), wire.pack({"value": "c's"}))
            assert await asyncio.wait_for(c.outcome, 10) == "c's"
        assert len(ingress._subs) == subs
        assert not waits._waits
    finally:
        await ingress.close()
        await other.close()
