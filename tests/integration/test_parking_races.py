"""Parking against a real nats-server: header values NATS would change, a waker restarted
with messages waiting, a parking racing the purge of its last delete marker."""

from __future__ import annotations

import pytest
from ak_dispatcher.waker import Waker
from akcore import parking, subjects, wire
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from .helpers import eventually
from .test_waker import _job, _park, _ready, _send, _signal, _woken, probe, waker  # noqa: F401

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("name", [" go", "go ", " go "])
async def test_a_signal_name_with_outer_spaces_wakes_the_parked_wait_that_takes_it(
    probe: Client,  # noqa: F811
    waker: Waker,  # noqa: F811
    name: str,
) -> None:
    """next_signal(" go") takes a signal named " go" when live (Inbox.take compares names
    exactly), so a parked next_signal(" go") must wake for it. NATS header values lose
    their outer spaces (nats-py strips them on publish and on parse): the Ak-Inbox-Key
    the waker reads is "go", want_of says "name:go", the wait wants "name: go", and the
    session is never woken (no deadline: it waits for ever)."""
    sid = "ses_spaced" + str(len(name)) + ("l" if name[0] == " " else "r")
    await _park(probe, sid, wants=(parking.want(wire.INBOX_SIGNAL, name),))
    await eventually(lambda: _ready(waker, 1))
    await _send(probe, sid, _signal(name))
    # a sentinel sent after it, that does wake: once it is woken the first was looked at
    await _park(probe, sid + "s", wants=(parking.want(wire.INBOX_SIGNAL, "go"),))
    await eventually(lambda: _known(waker, sid + "s"))
    await _send(probe, sid + "s", _signal("go"))
    await eventually(lambda: _woken(probe, sid + "s"))
    assert await _woken(probe, sid), "the parked session was not woken by the signal it waits for"


async def _known(w: Waker, sid: str) -> bool:
    return sid in w.parked.entries


async def test_a_restarted_waker_wakes_every_session_whose_message_came_while_it_was_away(
    probe: Client,  # noqa: F811
    nats_url: str,
) -> None:
    """Many sessions parked in next_signal("go"), each sent "go" while no waker ran: a
    waker that starts then learns them all at once and looks at each inbox (one JetStream
    API request each, all at the same time). A look that fails (a request timed out, the
    server's API queue full) is not tried again: that session sleeps for ever."""
    import asyncio

    from akcore import bus

    from tests.conftest import connect_as

    n = 2000
    js = probe.jetstream()
    kv = await js.key_value(subjects.BUCKET_PARKED)
    go = (parking.want(wire.INBOX_SIGNAL, "go"),)
    for i in range(n):
        sid = f"ses_many{i:05d}"
        entry = parking.Entry(parked_seq=4, deadline_us=0, inbox_seq=0, job=_job(sid), wants=go)
        await kv.create(sid, entry.encode())
    pub = bus.publisher(probe)
    await asyncio.gather(
        *(
            pub.publish(
                subjects.inbox_subject(f"ses_many{i:05d}"),
                wire.encode(_signal("go")),
                headers=parking.inbox_headers(_signal("go")),
            )
            for i in range(n)
        )
    )
    nc = await connect_as(nats_url, "dispatcher")
    w = Waker(nc)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:

        async def all_woken() -> bool:
            info = await js.stream_info(subjects.STREAM_JOBS)
            return info.state.messages >= n

        await eventually(all_woken, timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await nc.close()


async def test_a_parking_racing_the_purge_of_its_last_delete_marker_still_puts_its_entry(
    probe: Client,  # noqa: F811
) -> None:
    """The session was woken (its entry deleted: a marker at revision R) and parks again
    before a waker purged that marker. nats-py's kv.create tries last=0 (refused: the
    marker), reads the key (deleted, at R) and tries last=R; a waker's purge of the marker
    between the two makes the last try fail with KeyWrongLastSequenceError, which
    Parking.ensure reads as "its parking attempt put it already": the session is parked
    (journaled, job acked, worker killed) with no entry, and nothing ever wakes it, not
    even a stop."""
    from ak_runner.parking import Parking

    sid = "ses_purgerace"
    js = probe.jetstream()
    kv = await js.key_value(subjects.BUCKET_PARKED)
    first = parking.Entry(parked_seq=4, deadline_us=0, inbox_seq=0, job=_job(sid))
    await kv.create(sid, first.encode())
    await kv.delete(sid)  # woken: the marker stays until a waker purges it
    marker = (
        await js.get_last_msg(
            f"KV_{subjects.BUCKET_PARKED}",
            f"$KV.PARKED_X.{sid}".replace("PARKED_X", subjects.BUCKET_PARKED),
        )
    ).seq
    p = Parking(js, 30.0)
    bucket = await p.bucket()
    real_get = bucket._get

    reads = []

    async def purge() -> None:
        await js.purge_stream(
            f"KV_{subjects.BUCKET_PARKED}",
            seq=(marker or 0) + 1,
            subject=f"$KV.{subjects.BUCKET_PARKED}.{sid}",
        )

    async def get_then_purged(key: str, *a: object, **kw: object) -> object:
        reads.append(key)
        if len(reads) != 2:  # ensure's own read; then create's, with the purge after it
            return await real_get(key, *a, **kw)
        try:
            return await real_get(key, *a, **kw)
        finally:
            await purge()

    bucket._get = get_then_purged
    second = parking.Entry(parked_seq=9, deadline_us=0, inbox_seq=0, job=_job(sid))
    try:
        await p.register(sid, second)
    finally:
        bucket._get = real_get
    try:
        got = await kv.get(sid)
    except KeyNotFoundError:
        raise AssertionError("parked with no entry: nothing wakes the session") from None
    assert parking.Entry.decode(got.value or b"").parked_seq == 9
