"""Dispatcher: an event on a matching trigger becomes one session (created record + job);
filters are judged within their budget and leave notes on the event."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from typing import Any

import pytest
from ak_dispatcher.matching import sessions_for
from ak_dispatcher.service import GIVE_UP
from ak_dispatcher.service import run as run_dispatcher
from ak_store.service import run as run_store
from akcore import bus, ids, subjects, timefmt, wire
from akcore.config import Settings
from akcore.errors import InvalidArgument, NotFound, Unavailable
from akcore.secrets import load_keyring
from akcore.sessions import job_data, publish_session
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from .conftest import dispatching, running
from .helpers import SYNC, deploy, eventually, journal


async def test_event_becomes_one_session(settings: Settings) -> None:
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        event = _event(d, "post", {"body": {"bytes": b"body-k3"}})
        ignored = _event(d, "get")
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
        sub = await bus.bind(js, subjects.lane_consumer(subjects.job_lane(d["project_id"])))
        (msg,) = await sub.fetch(1, timeout=2)
        job = wire.decode(wire.Job, msg.data)
        assert job.event_id == event.event_id and job.entrypoint == "simple.py:greet"
        # Published in the clear (as by an earlier version): sealed on its way to the runner.
        assert job.data == {} and b"body-k3" not in msg.data
        assert job_data(job, load_keyring()) == {"body": {"bytes": b"body-k3"}}
        (created,) = await journal(nc, job.session_id)
        assert created.kind == wire.CREATED and created.data["deployment_id"] == d["deployment_id"]
        assert consumer is not None


async def _acked(js, n: int) -> bool:  # type: ignore[no-untyped-def]
    info = await js.consumer_info(subjects.STREAM_EVENTS, subjects.CONSUMER_DISPATCHER)
    return info.ack_floor.stream_seq >= n and info.num_ack_pending == 0


async def test_subscription_filters_judged_within_budget(settings: Settings) -> None:
    settings = dataclasses.replace(settings, filter_budget_ms=50)
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        trigger_id, light, heavy = d["trigger"]["trigger_id"], ids.new_id("ses"), ids.new_id("ses")
        subs = {
            light: "event_type == 'get'",  # takes nothing near the budget, however busy
            heavy: "data.items.all(x, data.items.all(y, y >= 0))",
        }
        for sid, flt in subs.items():
            args = {"session_id": sid, "project_id": d["project_id"], "trigger_id": trigger_id}
            await bus.store_call(
                nc, "subscription.create", {**args, "subscription_id": sid, "filter": flt}
            )
        # not the trigger's type: subscriptions only
        event = _event(d, "get", {"items": list(range(3000))})
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

        got = await eventually(notes, timeout=30)
        assert len(got) == 1, got
        (note,) = got
        assert note["source"] == heavy
        assert note["note"] == (
            f"subscription of session {heavy}: filter ran over its 50 ms budget;"
            " counted as no match"
        )
        inbox = await js.stream_info(subjects.STREAM_INBOX, subjects_filter=subjects.INBOX_ALL)
        assert set((inbox.state.subjects or {}).keys()) == {subjects.inbox_subject(light)}


async def test_a_redelivered_event_does_not_start_an_ended_session_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dispatcher that stalls past its ack wait gets the event again; meanwhile the event's
    session ran, ended and had its journal cleaned up. The event starts nothing new."""
    consumers = dict(bus.CONSUMERS)
    stream, config = consumers[subjects.CONSUMER_DISPATCHER]
    consumers[subjects.CONSUMER_DISPATCHER] = (stream, dataclasses.replace(config, ack_wait=2.0))
    monkeypatch.setattr(bus, "CONSUMERS", consumers)
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        event = _event(d, "post")
        await js.publish(
            subjects.event_subject(event.project_id, event.event_id), wire.encode(event)
        )
        # A first delivery that is never acked (the stalled dispatcher) ...
        first = await js.pull_subscribe_bind(subjects.CONSUMER_DISPATCHER, stream=stream)
        (msg,) = await first.fetch(1, timeout=5)
        assert msg.metadata.num_delivered == 1
        # ... while its session was started by it, ran and ended; its journal is purged.
        targets = await bus.store_call(nc, "dispatch.targets", {"trigger_id": event.destination_id})
        (job,) = sessions_for(event, targets["triggers"], targets["deployments"], {})
        for name in (subjects.STREAM_JOURNAL, subjects.STREAM_JOBS):  # a short memory of ids
            info = await js.stream_info(name)
            await js.update_stream(dataclasses.replace(info.config, duplicate_window=1.0))
        pub = bus.publisher(nc)
        await publish_session(pub, job)
        probe = {subjects.HDR_MSG_ID: "probe"}  # published after the session's messages
        await pub.publish(subjects.job_subject("prj", "probe"), b"", headers=probe)
        ended = wire.JournalRecord(
            job.session_id, 1, wire.ENDED, timefmt.now_us(), {"state": wire.COMPLETED}
        )
        await pub.publish(subjects.journal_subject(job.session_id), wire.encode(ended))
        await js.purge_stream(subjects.STREAM_JOBS)

        async def purged() -> bool:
            return await journal(nc, job.session_id) == []

        await eventually(purged, timeout=20)

        async def forgotten() -> bool:  # JetStream no longer drops a repeat of these ids
            ack = await pub.publish(subjects.job_subject("prj", "probe"), b"", headers=probe)
            return not ack.get("duplicate")

        await eventually(forgotten, timeout=20)
        await js.purge_stream(subjects.STREAM_JOBS)
        async with running(run_dispatcher, settings, "dispatcher"):
            await eventually(lambda: _acked(js, 1), timeout=20)  # the second delivery
        assert (await js.stream_info(subjects.STREAM_JOBS)).state.messages == 0
        assert await journal(nc, job.session_id) == []  # no second `created`
        got = await bus.store_call(nc, "session.get", {"session": job.session_id})
        assert got["state"] == wire.COMPLETED
        await nc.close()


async def test_a_sync_webhooks_event_dispatched_again_reports_its_session(
    settings: Settings,
) -> None:
    """A sync webhook's request waits for its event's dispatch report: an event dispatched
    a second time (a provider's redelivery, or after a dispatcher died before its ack)
    reaches the session the first time started, and says so (it said no session: the
    request got a 502 while its session ran)."""
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""}, SYNC)
        event = _event(d, "post")
        reports: list[dict[str, object]] = []

        async def on_report(msg: Any) -> None:
            reports.append(wire.unpack(msg.data))

        await nc.subscribe(subjects.dispatched_subject(event.event_id), cb=on_report)
        subject = subjects.event_subject(event.project_id, event.event_id)
        await js.publish(subject, wire.encode(event))
        await eventually(_async(lambda: len(reports) == 1))
        (sid,) = reports[0]["sessions"]  # type: ignore[misc]

        # ... which ran meanwhile (here: ended at once), as the store knows
        ended = wire.JournalRecord(sid, 2, wire.ENDED, timefmt.now_us(), {"state": wire.COMPLETED})
        await bus.publisher(nc).publish(subjects.journal_subject(sid), wire.encode(ended))

        async def known() -> bool:  # the store has it ended (it is asked again)
            try:
                got = await bus.store_call(nc, "session.get", {"session": sid})
            except NotFound:
                return False
            return bool(got["state"] == wire.COMPLETED)

        await eventually(known)
        again = dataclasses.replace(event, memo={"redelivered": "yes"})
        await js.publish(subject, wire.encode(again))
        await eventually(_async(lambda: len(reports) == 2))
        sessions = [r["sessions"] for r in reports]
        assert len(sessions[0]) == 1 and sessions[1] == sessions[0]
        assert (await js.stream_info(subjects.STREAM_JOBS)).state.messages == 1  # one session


def _async(probe: Any) -> Any:
    async def probed() -> bool:
        return bool(probe())

    return probed


async def test_a_subscription_made_again_is_kept_once(settings: Settings) -> None:
    """A session's `subscribe` tried again while the store was away (the earlier try
    carried out late) makes the same subscription, once: each event reaches the session
    once (a second row got a second copy of every event into its inbox, unread)."""
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        trigger_id, sid = d["trigger"]["trigger_id"], ids.new_id("ses")
        args = {"session_id": sid, "project_id": d["project_id"], "trigger_id": trigger_id}
        for _ in range(2):  # the same call's two tries: one subscription id
            await bus.store_call(
                nc, "subscription.create", {**args, "subscription_id": "sub-1", "filter": ""}
            )
        await bus.store_call(
            nc, "subscription.create", {**args, "subscription_id": "sub-2", "filter": ""}
        )
        event = _event(d, "get")
        await js.publish(
            subjects.event_subject(event.project_id, event.event_id), wire.encode(event)
        )

        async def delivered() -> int | None:
            info = await js.stream_info(subjects.STREAM_INBOX, subjects_filter=subjects.INBOX_ALL)
            return (info.state.subjects or {}).get(subjects.inbox_subject(sid))

        # (Counted once the dispatcher is done with the event: the two deliveries are two
        # publishes, and the first alone may be seen.)
        await eventually(lambda: _acked(js, 1), timeout=30)
        assert await delivered() == 2  # sub-1 once, sub-2 once


async def test_an_event_that_fails_every_time_is_given_up_with_a_note(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event whose dispatch fails with an error that will come again (here a fault put
    in for one event: a bug, say) is tried until it failed so GIVE_UP times, then left with
    a note: no endless redelivery, no session; the events after it are dispatched. Failures
    that pass (the store away, twice first) do not count: they are tried again in place."""
    d: dict[str, Any] = {}
    bad: list[wire.Event] = []
    calls: list[str] = []

    def faulty(event: wire.Event, *args: Any) -> list[wire.Job]:
        if event.event_id == bad[0].event_id:
            calls.append(event.event_id)
            if len(calls) <= 2:
                raise Unavailable("the store did not answer (a fault for this test)")
            raise KeyError("a fault for this test")
        return sessions_for(event, *args)

    monkeypatch.setattr("ak_dispatcher.service.sessions_for", faulty)
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        bad.append(_event(d, "post"))
        good = _event(d, "post")
        for ev in (bad[0], good):
            await js.publish(subjects.event_subject(ev.project_id, ev.event_id), wire.encode(ev))

        async def notes() -> list[dict[str, str]] | None:
            with contextlib.suppress(NotFound):
                got = await bus.store_call(nc, "event.get", {"event_id": bad[0].event_id})
                return got["notes"] or None
            return None

        (note,) = await eventually(notes, timeout=30)
        assert note["source"] == "dispatcher"
        assert note["note"] == (
            f"dispatch failed {GIVE_UP} times with KeyError (in the dispatcher's log); "
            "given up: nothing was started; `ak event redispatch` dispatches a copy"
        )
        await eventually(lambda: _acked(js, 2))  # nothing left to deliver: not retried
        info = await js.consumer_info(subjects.STREAM_EVENTS, subjects.CONSUMER_DISPATCHER)
        # Two events delivered, the bad one GIVE_UP times (its first delivery tried three
        # times in place), and then neither again.
        assert info.delivered.consumer_seq == 1 + GIVE_UP and info.num_pending == 0
        assert len(calls) == 2 + GIVE_UP
        assert (await js.stream_info(subjects.STREAM_JOBS)).state.messages == 1  # the good one


async def test_an_event_whose_session_is_over_the_nats_limit_is_given_up(
    settings: Settings,
) -> None:
    """An event that fits NATS's message limit, whose session's job (its data sealed, and
    the session's fields) does not (``ak event dispatch`` of ~8 MiB of data): each try
    failed with MaxPayloadError, which was taken for a failure that passes: tried again in
    place for 31 s (holding its destination's turn), handed back, and again, for ever. It
    fails the same every time: given up with a note after GIVE_UP tries."""
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        limit = nc.max_payload
        big = _event(d, "post", {"pad": "x"})
        pad = limit - len(wire.encode(big)) - 80  # (a longer string header: 4 bytes more)
        big = dataclasses.replace(big, data={"pad": "x" * pad})
        assert limit - 200 < len(wire.encode(big)) <= limit - 64
        await js.publish(subjects.event_subject(big.project_id, big.event_id), wire.encode(big))

        # Left (its note kept: too big an event for `event.get` to show here), not tried
        # again: delivered GIVE_UP times, and nothing is pending.
        await eventually(lambda: _acked(js, 1), timeout=30)
        info = await js.consumer_info(subjects.STREAM_EVENTS, subjects.CONSUMER_DISPATCHER)
        assert info.delivered.consumer_seq == GIVE_UP and info.num_pending == 0
        assert (await js.stream_info(subjects.STREAM_JOBS)).state.messages == 0


def _event(d: dict[str, Any], event_type: str, data: dict[str, Any] | None = None) -> wire.Event:
    """An event of the deployed trigger ``d``, sent now."""
    return wire.Event(
        ids.new_id("evt"),
        d["project_id"],
        d["trigger"]["trigger_id"],
        event_type,
        data or {},
        {},
        timefmt.now_us(),
    )


async def test_an_event_reaches_every_subscription_whatever_their_number(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store answers a trigger's subscriptions a page at a time (pages of three here);
    the dispatcher reads them all: each matching one gets the event, the others not."""
    import ak_store.api

    monkeypatch.setattr(ak_store.api, "SUBSCRIPTIONS_PAGE", 3)
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        trigger_id = d["trigger"]["trigger_id"]
        sessions = [ids.new_id("ses") for _ in range(10)]
        for i, sid in enumerate(sessions):
            await bus.store_call(
                nc,
                "subscription.create",
                {
                    "subscription_id": f"sub-{i:02}",
                    "session_id": sid,
                    "project_id": d["project_id"],
                    "trigger_id": trigger_id,
                    "filter": "event_type == 'get'" if i % 3 else "event_type == 'post'",
                },
            )
        event = _event(d, "get")
        await js.publish(
            subjects.event_subject(event.project_id, event.event_id), wire.encode(event)
        )
        await eventually(lambda: _acked(js, 1), timeout=30)
        info = await js.stream_info(subjects.STREAM_INBOX, subjects_filter=subjects.INBOX_ALL)
        reached = set(info.state.subjects or {})
        assert reached == {subjects.inbox_subject(s) for i, s in enumerate(sessions) if i % 3}


async def test_subscriptions_are_answered_in_pages_that_fit_a_message(settings: Settings) -> None:
    """300 subscriptions with filters of 4,096 three-byte characters (3.6 MB in all) come
    in pages of at most about 512 KiB (one answer of them all once exceeded NATS's limit
    at about 2,000 such, and every event on the trigger failed until fewer were left)."""
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        try:
            d = await deploy(nc, "p", {"simple.py": b""})
            trigger_id = d["trigger"]["trigger_id"]
            made = {}
            for i in range(300):
                flt = f"data.k == '{'あ' * 4080}' || {i} == {i}"
                made[f"sub-{i:03}"] = flt
                await bus.store_call(
                    nc,
                    "subscription.create",
                    {
                        "subscription_id": f"sub-{i:03}",
                        "session_id": ids.new_id("ses"),
                        "project_id": d["project_id"],
                        "trigger_id": trigger_id,
                        "filter": flt,
                    },
                )
            got: dict[str, str] = {}
            after, pages = "", 0
            while True:
                raw = await nc.request(
                    subjects.store_subject("dispatch.targets"),
                    wire.pack({"trigger_id": trigger_id, "after": after}),
                    timeout=10,
                )
                assert len(raw.data) < 600 * 1024, f"a page of {len(raw.data)} bytes"
                page = await bus.store_call(
                    nc, "dispatch.targets", {"trigger_id": trigger_id, "after": after}
                )
                got.update({s["subscription_id"]: s["filter"] for s in page["subscriptions"]})
                pages += 1
                if not (after := page["more"]):
                    break
            assert got == made
            assert pages >= 6
        finally:
            await nc.close()


async def test_a_session_and_a_source_have_at_most_so_many_subscriptions(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ak_store.api

    monkeypatch.setattr(ak_store.api, "MAX_SOURCE_SUBSCRIPTIONS", 120)
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        try:
            d = await deploy(nc, "p", {"simple.py": b""})
            args = {"project_id": d["project_id"], "trigger_id": d["trigger"]["trigger_id"]}
            one = ids.new_id("ses")
            for i in range(100):
                await bus.store_call(
                    nc,
                    "subscription.create",
                    {**args, "session_id": one, "subscription_id": f"a{i}", "filter": ""},
                )
            with pytest.raises(InvalidArgument) as refused:
                await bus.store_call(
                    nc,
                    "subscription.create",
                    {**args, "session_id": one, "subscription_id": "a100", "filter": ""},
                )
            assert refused.value.message == (
                "this session already has 100 subscriptions, the limit: unsubscribe from "
                "some before subscribing again"
            )
            # The same call tried again (the store away the first time) still passes.
            await bus.store_call(
                nc,
                "subscription.create",
                {**args, "session_id": one, "subscription_id": "a99", "filter": ""},
            )
            for i in range(20):
                await bus.store_call(
                    nc,
                    "subscription.create",
                    {**args, "session_id": ids.new_id("ses"), "subscription_id": f"b{i}"},
                )
            with pytest.raises(InvalidArgument, match="this source already has 120 sub"):
                await bus.store_call(
                    nc,
                    "subscription.create",
                    {**args, "session_id": ids.new_id("ses"), "subscription_id": "b20"},
                )
            # Unsubscribing makes room again.
            await bus.store_call(nc, "subscription.delete", {"session_id": one})
            await bus.store_call(
                nc,
                "subscription.create",
                {**args, "session_id": one, "subscription_id": "a100", "filter": ""},
            )
        finally:
            await nc.close()


async def test_an_event_waiting_for_its_turn_past_the_ack_wait_is_not_handed_out_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two events of one trigger with a waiting session subscribed: the first is held up
    (its session made slowly: a busy store, say) until both were told in progress four
    times (past twice the ack wait), the second waiting for its turn behind it. Neither is
    handed out again (a copy would take a turn behind the events after it: the session got
    them out of order), and the session gets them in the order they came."""
    consumers = dict(bus.CONSUMERS)
    stream, config = consumers[subjects.CONSUMER_DISPATCHER]
    consumers[subjects.CONSUMER_DISPATCHER] = (stream, dataclasses.replace(config, ack_wait=2.0))
    monkeypatch.setattr(bus, "CONSUMERS", consumers)
    told: collections.Counter[int] = collections.Counter()  # in-progress notices, by event
    in_progress = Msg.in_progress

    async def counted(self: Msg) -> None:
        told[self.metadata.sequence.stream] += 1
        await in_progress(self)

    monkeypatch.setattr(Msg, "in_progress", counted)
    slow: list[str] = []
    let_go = asyncio.Event()
    real = publish_session

    async def slowly(pub: Any, job: wire.Job) -> None:
        if job.event_id in slow:
            await let_go.wait()
        await real(pub, job)

    monkeypatch.setattr("ak_dispatcher.service.publish_session", slowly)
    async with dispatching(settings, let_go) as nc:
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        sid = await _subscribed(nc, d)
        first, second = _event(d, "post"), _event(d, "get")
        slow.append(first.event_id)
        for ev in (first, second):
            await js.publish(subjects.event_subject(ev.project_id, ev.event_id), wire.encode(ev))
        # (HOLD is 1 s: four notices each is past twice the 2 s ack wait)
        await eventually(_async(lambda: told[1] >= 4 and told[2] >= 4), timeout=30)
        let_go.set()
        await eventually(lambda: _acked(js, 2), timeout=30)
        info = await js.consumer_info(subjects.STREAM_EVENTS, subjects.CONSUMER_DISPATCHER)
        assert info.num_redelivered == 0 and info.delivered.consumer_seq == 2
        assert await _inbox(js, sid, 2) == [first.event_id, second.event_id]


@pytest.mark.parametrize("sub_filter", ["", "event_type == 'get'"], ids=["plain", "filtered"])
async def test_an_event_whose_delivery_failed_for_a_while_keeps_its_place(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, sub_filter: str
) -> None:
    """The first of two events of one trigger cannot be delivered to the waiting session
    for a while (JetStream did not answer, twice) while the second, judged, waits for its
    turn behind it. The first is tried again in place, keeping its turn (with a filter it
    is not deferred: its copy, judged later, came after the second): the session gets the
    two in the order they came, each once (handed back to JetStream, the first came again
    after the second)."""
    from ak_dispatcher import service as svc

    monkeypatch.setattr(svc, "AGAIN_IN_PLACE", (0.2,) * 5)
    made: list[svc.Dispatcher] = []
    init, aenter = svc.Dispatcher.__init__, svc.Turn.__aenter__

    def capture(self: svc.Dispatcher, *a: Any, **kw: Any) -> None:
        init(self, *a, **kw)
        made.append(self)

    entered: list[svc.Turn] = []

    async def entering(self: svc.Turn) -> None:
        entered.append(self)
        await aenter(self)

    monkeypatch.setattr(svc.Dispatcher, "__init__", capture)
    monkeypatch.setattr(svc.Turn, "__aenter__", entering)
    failing: list[str] = []
    publish = bus.Publisher.publish

    async def unanswered(self: bus.Publisher, subject: str, *a: Any, **kw: Any) -> Any:
        msg_id = (kw.get("headers") or {}).get(subjects.HDR_MSG_ID, "")
        if failing and msg_id.startswith(failing[0]) and len(failing) < 3:
            failing.append(subject)
            # the second waits for its turn behind it (a state, not a window)
            await eventually(_async(lambda: len(entered) >= 2), timeout=20)
            raise TimeoutError("nats: timeout (a fault for this test)")
        return await publish(self, subject, *a, **kw)

    monkeypatch.setattr(bus.Publisher, "publish", unanswered)
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        await eventually(_async(lambda: made and made[0].deferring), timeout=30)  # (it could)
        d = await deploy(nc, "p", {"simple.py": b""})
        sid = await _subscribed(nc, d, sub_filter)
        first, second = _event(d, "get"), _event(d, "get")  # (no session: deliveries only)
        failing.append(first.event_id)
        for ev in (first, second):
            await js.publish(subjects.event_subject(ev.project_id, ev.event_id), wire.encode(ev))
        await eventually(lambda: _acked(js, 2), timeout=30)
        assert failing[1:] == [subjects.inbox_subject(sid)] * 2  # (the fault did happen)
        info = await js.consumer_info(subjects.STREAM_EVENTS, subjects.CONSUMER_DISPATCHER)
        assert info.delivered.consumer_seq == 2  # neither handed back
        assert (await js.stream_info(subjects.STREAM_DEFERRED)).state.last_seq == 0
        assert await _inbox(js, sid, 2) == [first.event_id, second.event_id]  # each once


async def test_a_dispatcher_that_stops_hands_back_the_event_it_was_trying_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dispatcher told to stop while an event waits to be tried again in place (its
    delivery failed: JetStream did not answer) stops at once and hands the event back
    (the pause before the next try is ten minutes; the test's wait for the stop, 15 s): the
    next dispatcher delivers it, once."""
    monkeypatch.setattr("ak_dispatcher.service.AGAIN_IN_PLACE", (600.0,))
    failing: list[str] = []
    publish = bus.Publisher.publish

    async def unanswered(self: bus.Publisher, subject: str, *a: Any, **kw: Any) -> Any:
        msg_id = (kw.get("headers") or {}).get(subjects.HDR_MSG_ID, "")
        if failing and msg_id.startswith(failing[0]):
            failing.append(subject)
            raise TimeoutError("nats: timeout (a fault for this test)")
        return await publish(self, subject, *a, **kw)

    monkeypatch.setattr(bus.Publisher, "publish", unanswered)
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        sid = await _subscribed(nc, d)
        event = _event(d, "get")
        failing.append(event.event_id)
        await js.publish(
            subjects.event_subject(event.project_id, event.event_id), wire.encode(event)
        )
        await eventually(_async(lambda: len(failing) > 1), timeout=30)
    assert failing[1:] == [subjects.inbox_subject(sid)]  # tried once, then the stop
    failing.clear()
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        await eventually(lambda: _acked(js, 1), timeout=30)
        assert await _inbox(js, sid, 1) == [event.event_id]  # once


async def test_an_event_that_keeps_failing_is_tried_after_each_pause_then_handed_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store does not answer for one delivery of an event: it is tried again after
    each pause of ``AGAIN_IN_PLACE`` (the last cut to the window, not skipped), then handed
    back to JetStream; its next delivery starts its session, once."""
    from ak_dispatcher import service as svc

    monkeypatch.setattr(svc, "AGAIN_IN_PLACE", (0.05,) * 3)
    deliveries: list[int] = []  # each try's delivery number
    dispatch = svc.Dispatcher.dispatch

    async def away_for_one_delivery(self: svc.Dispatcher, msg: Any, *a: Any) -> Any:
        deliveries.append(msg.metadata.num_delivered)
        if msg.metadata.num_delivered == 1:
            raise Unavailable("the store did not answer (a fault for this test)")
        return await dispatch(self, msg, *a)

    monkeypatch.setattr(svc.Dispatcher, "dispatch", away_for_one_delivery)
    async with dispatching(settings) as nc:
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": b""})
        event = _event(d, "post")
        await js.publish(
            subjects.event_subject(event.project_id, event.event_id), wire.encode(event)
        )
        await eventually(lambda: _acked(js, 1), timeout=30)
        assert deliveries == [1, 1, 1, 1, 2]  # four tries (three pauses), then handed back
        assert (await js.stream_info(subjects.STREAM_JOBS)).state.messages == 1


async def _subscribed(nc: Any, d: dict[str, Any], sub_filter: str = "") -> str:
    """A waiting session subscribed to the events of the deployed trigger ``d``: its id."""
    trigger_id, sid = d["trigger"]["trigger_id"], ids.new_id("ses")
    args = {"session_id": sid, "project_id": d["project_id"], "trigger_id": trigger_id}
    await bus.store_call(
        nc, "subscription.create", {**args, "subscription_id": "sub-1", "filter": sub_filter}
    )
    return sid


async def _inbox(js: Any, sid: str, n: int) -> list[str]:
    """The events delivered to the session's inbox, in order, once there are ``n``; no
    more come."""
    inbox = await js.subscribe(
        subjects.inbox_subject(sid), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    try:
        got = [wire.decode(wire.InboxMessage, (await inbox.next_msg(5)).data) for _ in range(n)]
        with pytest.raises(TimeoutError):
            await inbox.next_msg(0.5)
    finally:
        await inbox.unsubscribe()
    return [m.event["event_id"] for m in got]
