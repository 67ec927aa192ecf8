"""Dispatcher: an event on a matching trigger becomes one session (created record + job);
filters are judged within their budget and leave notes on the event."""

from __future__ import annotations

import dataclasses

from ak_dispatcher.service import run as run_dispatcher
from ak_store.service import run as run_store
from akcore import bus, ids, subjects, timefmt, wire
from akcore.config import Settings
from akcore.errors import NotFound

from .conftest import running
from .helpers import deploy, eventually, journal


async def test_event_becomes_one_session(settings: Settings) -> None:
    async with (
        running(run_store, settings, "store"),
        running(run_dispatcher, settings, "dispatcher"),
    ):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        event = wire.Event(
            ids.new_id("evt"),
            d["project_id"],
            d["trigger"]["trigger_id"],
            "post",
            {"body": {"bytes": b"x"}},
            {},
            timefmt.now_us(),
        )
        ignored = wire.Event(
            ids.new_id("evt"),
            d["project_id"],
            d["trigger"]["trigger_id"],
            "get",
            {},
            {},
            timefmt.now_us(),
        )
        for ev in (ignored, event):
            await js.publish(subjects.event_subject(ev.project_id, ev.event_id), wire.encode(ev))
        # The same event delivered again (as after a dispatcher crash before its ack).
        await js.publish(
            subjects.event_subject(event.project_id, event.event_id), wire.encode(event)
        )

        async def jobs() -> int | None:
            info = await js.stream_info(subjects.STREAM_JOBS)
            return info.state.messages or None

        await eventually(jobs)
        consumer = await js.consumer_info(subjects.STREAM_EVENTS, subjects.CONSUMER_DISPATCHER)
        await eventually(lambda: _acked(js, 3))
        assert (await js.stream_info(subjects.STREAM_JOBS)).state.messages == 1
        sub = await bus.bind(js, subjects.CONSUMER_RUNNER)
        (msg,) = await sub.fetch(1, timeout=2)
        job = wire.decode(wire.Job, msg.data)
        assert job.event_id == event.event_id and job.entrypoint == "simple.py:greet"
        assert job.data == {"body": {"bytes": b"x"}}
        (created,) = await journal(nc, job.session_id)
        assert created.kind == wire.CREATED and created.data["deployment_id"] == d["deployment_id"]
        assert consumer is not None
        await nc.close()


async def _acked(js, n: int) -> bool:  # type: ignore[no-untyped-def]
    info = await js.consumer_info(subjects.STREAM_EVENTS, subjects.CONSUMER_DISPATCHER)
    return info.ack_floor.stream_seq >= n and info.num_ack_pending == 0


async def test_subscription_filters_judged_within_budget(settings: Settings) -> None:
    settings = dataclasses.replace(settings, filter_budget_ms=50)
    async with (
        running(run_store, settings, "store"),
        running(run_dispatcher, settings, "dispatcher"),
    ):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        trigger_id, light, heavy = d["trigger"]["trigger_id"], ids.new_id("ses"), ids.new_id("ses")
        subs = {
            light: "data.items.size() == 3000",
            heavy: "data.items.all(x, data.items.all(y, y >= 0))",
        }
        for sid, flt in subs.items():
            args = {"session_id": sid, "project_id": d["project_id"], "trigger_id": trigger_id}
            await bus.store_call(
                nc, "subscription.create", {**args, "subscription_id": sid, "filter": flt}
            )
        event = wire.Event(
            ids.new_id("evt"),
            d["project_id"],
            trigger_id,
            "get",  # not the trigger's type: subscriptions only
            {"items": list(range(3000))},
            {},
            timefmt.now_us(),
        )
        await js.publish(
            subjects.event_subject(event.project_id, event.event_id), wire.encode(event)
        )

        async def notes() -> list[dict[str, str]] | None:
            try:
                return (await bus.store_call(nc, "event.get", {"event_id": event.event_id}))[
                    "notes"
                ]
            except NotFound:
                return None

        (note,) = await eventually(notes, timeout=30)
        assert note["source"] == heavy
        assert note["note"] == (
            f"subscription of session {heavy}: filter ran over its 50 ms budget;"
            " counted as no match"
        )
        inbox = await js.stream_info(subjects.STREAM_INBOX, subjects_filter=subjects.INBOX_ALL)
        assert set((inbox.state.subjects or {}).keys()) == {subjects.inbox_subject(light)}
        await nc.close()
