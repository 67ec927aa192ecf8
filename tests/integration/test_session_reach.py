"""A session signals only sessions of its own project, and answers only its project's events,
also once their journals or events have left JetStream (the store then says whose they are);
another project's is "not found", word for word what an id that does not exist gets."""

from __future__ import annotations

from ak_runner.inbox import Inbox
from ak_runner.syscalls import SyscallError, Syscalls
from ak_store.service import run as run_store
from akcore import bus, ids, subjects, wire
from akcore.config import Settings
from akcore.errors import NotFound
from akcore.sessions import publish_session
from autokitteh._values import dumps

from .conftest import running
from .helpers import deploy, eventually


def _job(d: dict[str, str]) -> wire.Job:
    return wire.Job(
        ids.new_id("ses"),
        d["project_id"],
        d["deployment_id"],
        d["build_id"],
        "h.py:main",
        True,
        None,
        None,
        {},
    )


async def test_signals_reach_only_the_senders_project(settings: Settings) -> None:
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        code = {"h.py": b"def main(event): pass\n"}
        mine, theirs = await deploy(nc, "mine", code), await deploy(nc, "theirs", code)
        sender, friend, stranger = _job(mine), _job(mine), _job(theirs)
        pub = bus.publisher(nc)
        for job in (friend, stranger):
            await publish_session(pub, job)

        async def in_store() -> bool:
            args = {"session_ids": [friend.session_id, stranger.session_id]}
            return len(await bus.store_call(nc, "session.states", args)) == 2

        await eventually(in_store, timeout=20)
        for job in (friend, stranger):  # (the store's sweep purges ended journals)
            await js.purge_stream(
                subjects.STREAM_JOURNAL, subject=subjects.journal_subject(job.session_id)
            )
        calls = Syscalls(nc, sender, Inbox(js, sender.session_id, set(), lambda r, f: None))

        async def signal(target: str) -> str:
            try:
                await calls.call("signal", {"session_id": target, "name": "n"}, dumps(1), None)
            except SyscallError as e:
                return str(e)
            return "sent"

        nobody = ids.new_id("ses")
        assert await signal(friend.session_id) == "sent"
        assert await signal(stranger.session_id) == f'session "{stranger.session_id}" not found'
        assert await signal(nobody) == f'session "{nobody}" not found'
        await nc.close()


async def test_outcomes_answer_only_the_senders_projects_events(settings: Settings) -> None:
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        code = {"h.py": b"def main(event): pass\n"}
        mine, theirs = await deploy(nc, "mine", code), await deploy(nc, "theirs", code)
        events = [
            wire.Event(ids.new_id("evt"), d["project_id"], d["trigger"]["trigger_id"], "post", {})
            for d in (mine, theirs)
        ]
        for ev in events:
            await js.publish(subjects.event_subject(ev.project_id, ev.event_id), wire.encode(ev))

        async def in_store() -> bool:
            for ev in events:
                try:
                    await bus.store_call(nc, "event.get", {"event_id": ev.event_id})
                except NotFound:
                    return False
            return True

        await eventually(in_store, timeout=20)
        sender = _job(mine)
        calls = Syscalls(nc, sender, Inbox(js, sender.session_id, set(), lambda r, f: None))

        async def outcome(event_id: str) -> str:
            try:
                await calls.call("outcome", {"value": 1, "event_id": event_id}, b"", None)
            except SyscallError as e:
                return str(e)
            return "sent"

        ours, other = (ev.event_id for ev in events)
        nobody = ids.new_id("evt")
        for aged_out in (False, True):
            if aged_out:  # (the events stream keeps events for a while only)
                await js.purge_stream(subjects.STREAM_EVENTS)
            assert await outcome(ours) == "sent"
            assert await outcome(other) == f'event "{other}" not found'
            assert await outcome(nobody) == f'event "{nobody}" not found'
        await nc.close()


async def test_a_session_removes_only_its_own_subscriptions(settings: Settings) -> None:
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        d = await deploy(nc, "subs", {"h.py": b"def main(event): pass\n"})
        owner, other = _job(d), _job(d)
        calls = {
            job.session_id: Syscalls(nc, job, Inbox(js, job.session_id, set(), lambda r, f: None))
            for job in (owner, other)
        }
        sub, _ = await calls[owner.session_id].call("subscribe", {"source": "events"}, b"", None)

        async def subscribed() -> list[str]:
            args = {"trigger_id": d["trigger"]["trigger_id"]}
            targets = await bus.store_call(nc, "dispatch.targets", args)
            return [s["subscription_id"] for s in targets["subscriptions"]]

        await calls[other.session_id].call("unsubscribe", {"subscription": sub}, b"", None)
        assert await subscribed() == [sub]
        await calls[owner.session_id].call("unsubscribe", {"subscription": sub}, b"", None)
        assert await subscribed() == []
        await nc.close()
