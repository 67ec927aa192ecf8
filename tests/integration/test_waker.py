"""The waker (services/dispatcher/waker.py) against a real nats-server, as the dispatcher's
NATS user: what wakes a parked session (a message its wait takes, a stop, its deadline;
not a message it does not take), and the delete markers of woken entries purged. Every
wait is on a state (a wake job published, an entry gone)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ak_dispatcher.waker import Waker
from akcore import bus, parking, subjects, timefmt, wire
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError

from tests.conftest import connect_as

from .helpers import eventually

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def probe(nats_url: str) -> AsyncIterator[Client]:
    """The test's own connection (an admin), the streams and buckets created."""
    nc = await bus.connect(nats_url, "test-probe")
    await bus.ensure_streams(nc.jetstream())
    yield nc
    await nc.close()


@pytest.fixture
async def waker(nats_url: str, probe: Client) -> AsyncIterator[Waker]:
    """A waker on the dispatcher's user (its permissions are the ones it runs with),
    purging delete markers as soon as it sees them."""
    nc = await connect_as(nats_url, "dispatcher")
    w = Waker(nc)
    w.PURGE_EVERY = 0.0
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await asyncio.wait_for(task, 15)
    await nc.close()


def _job(sid: str) -> bytes:
    job = wire.Job(sid, "prj_x", "dep_x", "bld_x", "f.py:h", True, None, None, {})
    return wire.encode(job)


async def _park(nc: Client, sid: str, **kw: object) -> None:
    fields: dict[str, object] = {"deadline_us": 0, "inbox_seq": 0, **kw}
    entry = parking.Entry(parked_seq=4, job=_job(sid), **fields)  # type: ignore[arg-type]
    kv = await nc.jetstream().key_value(subjects.BUCKET_PARKED)
    await kv.create(sid, entry.encode())


async def _send(nc: Client, sid: str, msg: wire.InboxMessage) -> int:
    ack = await nc.jetstream().publish(
        subjects.inbox_subject(sid), wire.encode(msg), headers=parking.inbox_headers(msg)
    )
    return int(ack.seq)


async def _woken(nc: Client, sid: str) -> bool:
    """Whether the session's wake job is in AK_JOBS."""
    try:
        msg = await nc.jetstream().get_last_msg(
            subjects.STREAM_JOBS, subjects.job_subject("prj_x", sid)
        )
    except NotFoundError:
        return False
    return wire.decode(wire.Job, msg.data or b"").parked_seq == 4


async def _in_bucket(nc: Client, sid: str) -> bool:
    """Whether AK_PARKED holds any message of the session (an entry or a delete marker)."""
    try:
        await nc.jetstream().get_last_msg(
            f"KV_{subjects.BUCKET_PARKED}", f"$KV.{subjects.BUCKET_PARKED}.{sid}"
        )
    except (NotFoundError, NatsTimeout):
        return False
    return True


def _signal(name: str) -> wire.InboxMessage:
    return wire.InboxMessage(kind=wire.INBOX_SIGNAL, name=name)


async def test_only_a_message_the_wait_takes_or_a_stop_wakes_it(
    probe: Client, waker: Waker
) -> None:
    """A session parked in next_signal("go") is not woken by a signal of another name (it
    stays in its inbox); "go" wakes it. A sleeper is woken by a stop request only. The
    waker reads the inbox in order, so once a later message's wake is seen, the earlier
    message was looked at."""
    go = (parking.want(wire.INBOX_SIGNAL, "go"),)
    await _park(probe, "ses_picky", wants=go)
    await _park(probe, "ses_sentinel", wants=go)
    await _park(probe, "ses_sleeper", wants=(), deadline_us=timefmt.now_us() + 3600 * 10**6)
    await eventually(lambda: _ready(waker, 3))
    await _send(probe, "ses_picky", _signal("other"))
    await _send(probe, "ses_sleeper", _signal("go"))
    await _send(probe, "ses_sentinel", _signal("go"))
    await eventually(lambda: _woken(probe, "ses_sentinel"))
    assert not await _woken(probe, "ses_picky")
    assert not await _woken(probe, "ses_sleeper")
    await _send(probe, "ses_picky", _signal("go"))
    await _send(probe, "ses_sleeper", wire.InboxMessage(kind=wire.INBOX_STOP, reason="enough"))
    await eventually(lambda: _woken(probe, "ses_picky"))
    await eventually(lambda: _woken(probe, "ses_sleeper"))


async def test_a_message_the_wait_takes_that_came_while_it_parked_wakes_it(
    probe: Client, waker: Waker
) -> None:
    """As its entry is learned, the waker looks at all of its inbox past what the session
    read, not only the last message."""
    await _send(probe, "ses_early", _signal("go"))
    await _send(probe, "ses_early", _signal("other"))
    await _park(probe, "ses_early", wants=(parking.want(wire.INBOX_SIGNAL, "go"),))
    await eventually(lambda: _woken(probe, "ses_early"))


async def test_a_woken_entrys_delete_marker_is_purged(probe: Client, waker: Waker) -> None:
    await _park(probe, "ses_due", deadline_us=timefmt.now_us() - 1)
    await eventually(lambda: _woken(probe, "ses_due"))
    await eventually(lambda: _gone(probe, "ses_due"))
    # Parked again: the new entry is put (create works on a purged key) and wakes again.
    kv = await probe.jetstream().key_value(subjects.BUCKET_PARKED)
    entry = parking.Entry(9, timefmt.now_us() - 1, 0, _job("ses_due"))
    await kv.create("ses_due", entry.encode())
    await eventually(lambda: _gone(probe, "ses_due"))


async def test_an_entry_whose_delete_failed_is_deleted_on_a_later_try(
    probe: Client, waker: Waker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake job published, the entry's delete timed out (NATS away a moment): the
    entry is not left for good (woken again by every dispatcher that starts): the session
    is woken again in a while, and its entry deleted then."""
    from nats.js.kv import KeyValue

    delete, failed = KeyValue.delete, asyncio.Event()

    async def fails_once(self: KeyValue, key: str, last: int | None = None) -> bool:
        if not failed.is_set():
            failed.set()
            raise NatsTimeout
        return await delete(self, key, last=last)

    monkeypatch.setattr(KeyValue, "delete", fails_once)
    waker.RETRY = 0.1
    await _park(probe, "ses_flaky", deadline_us=timefmt.now_us() - 1)
    await failed.wait()
    await eventually(lambda: _gone(probe, "ses_flaky"))
    assert await _woken(probe, "ses_flaky")


async def _gone(nc: Client, sid: str) -> bool:
    return not await _in_bucket(nc, sid)


async def _ready(w: Waker, n: int) -> bool:
    return len(w.parked.entries) >= n and w._inbox is not None


async def test_a_look_at_an_inbox_that_fails_is_tried_again(
    probe: Client, waker: Waker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session's signal reached its inbox while it parked, before the waker learned its
    entry: only the waker's look at the inbox as it learns the entry sees it. That look
    fails once (JetStream did not answer: busy, electing a leader, a waker starting with
    many entries at once). It is tried again, and the session wakes (given up, it slept
    until its deadline; without one, for good)."""
    from nats.js.client import JetStreamContext

    go = (parking.want(wire.INBOX_SIGNAL, "go"),)
    await _park(probe, "ses_first", wants=go)  # (the waker's inbox subscription is up)
    await eventually(lambda: _ready(waker, 1))
    real, failed = JetStreamContext.get_last_msg, asyncio.Event()

    async def fails_once(self: JetStreamContext, stream: str, subject: str, *a: Any) -> Any:
        if subject == subjects.inbox_subject("ses_late") and not failed.is_set():
            failed.set()
            raise NatsTimeout
        return await real(self, stream, subject, *a)

    monkeypatch.setattr(JetStreamContext, "get_last_msg", fails_once)
    await _send(probe, "ses_late", _signal("go"))  # before it parks: its inbox_seq is past it
    await _park(probe, "ses_late", wants=go)
    await failed.wait()
    assert await eventually(lambda: _woken(probe, "ses_late"))
