"""A wait whose time is up still takes a message its inbox held before: the inbox's
consumer, made only as the wait begins, delivers what the inbox holds a moment later.
A child's end told twice is one end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ak_runner.inbox import Inbox
from akcore import bus, subjects, wire


async def test_a_wait_with_no_time_left_takes_what_its_inbox_already_held(nats_url: str) -> None:
    """A parked next_signal woken after its deadline is served with a timeout of 0 (the
    whole wait never lasts longer than the handler asked): the signal that came before the
    deadline is taken, not reported as a timeout because the consumer had not delivered it
    yet."""
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    pub = bus.publisher(nc)
    for i in range(20):  # twenty sessions, each with a signal and a stop-free inbox
        sid = f"ses_01m8cpgk96e6wakscbfn30{i:04d}"
        other = wire.InboxMessage(kind=wire.INBOX_SIGNAL, name="other")
        go = wire.InboxMessage(kind=wire.INBOX_SIGNAL, name="go")
        for m in (other, go):
            await pub.publish(subjects.inbox_subject(sid), wire.encode(m))
        inbox = Inbox(js, sid, set(), lambda reason, failed: None)
        try:
            got = await inbox.take(["go"], lambda m: m.name, timeout=0)
            assert got is not None, f"session {i}: the signal in its inbox was not taken"
            assert got[1].name == "go" and got[0] == inbox.last_seq
            # nothing else it wants: the wait times out, the other signal left for later
            assert await inbox.take(["go"], lambda m: m.name, timeout=0) is None
            assert [m.name for _, m in inbox.buffer] == ["other"]
        finally:
            await inbox.close()
    await nc.close()


async def test_a_wait_with_no_time_left_on_an_empty_inbox_times_out(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    inbox = Inbox(js, "ses_01m8cpgk96e6wakscbfn3064zz", set(), lambda reason, failed: None)
    try:
        assert await inbox.take(["go"], lambda m: m.name, timeout=0) is None
        assert await inbox.take(["go"], lambda m: m.name, timeout=0.2) is None
    finally:
        await inbox.close()
    await nc.close()


async def test_a_wait_whose_inbox_ends_with_a_message_taken_before_does_not_hang(
    nats_url: str,
) -> None:
    """The inbox's messages were all taken by earlier attempts (the replay skips them):
    the read up to the end counts them as read, rather than waiting for a message to come.
    (Many, so that some are delivered after the wait learned the last one's number.)"""
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    sid = "ses_01m8cpgk96e6wakscbfn3064yy"
    go = wire.InboxMessage(kind=wire.INBOX_SIGNAL, name="go")
    taken = {
        (await js.publish(subjects.inbox_subject(sid), wire.encode(go))).seq for _ in range(500)
    }
    inbox = Inbox(js, sid, taken, lambda reason, failed: None)
    inbox.CATCH_UP = 3600  # a read that waited for more would outlast the test's timeout
    try:
        async with asyncio.timeout(30):
            assert await inbox.take(["go"], lambda m: m.name, timeout=0) is None
    finally:
        await inbox.close()
    await nc.close()


async def test_a_child_s_end_told_twice_is_taken_once(nats_url: str) -> None:
    """A child's end comes again when a job of the child delivered past JetStream's
    duplicate window finds its journal ended and tells the parent once more: the parent
    takes one end, whether the first was taken by this attempt or an earlier one."""
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    sid = "ses_01m8cpgk96e6wakscbfn3064xx"
    end = wire.InboxMessage(kind=wire.INBOX_CHILD_END, name="ses_child", completed=True)
    first = await js.publish(subjects.inbox_subject(sid), wire.encode(end))
    sig = wire.InboxMessage(kind=wire.INBOX_SIGNAL, name="ses_child")  # a signal: not an end
    await js.publish(subjects.inbox_subject(sid), wire.encode(sig))
    await js.publish(subjects.inbox_subject(sid), wire.encode(end))

    def key(m: wire.InboxMessage) -> str:
        return f"{m.kind}:{m.name}"

    wanted = [f"{wire.INBOX_CHILD_END}:ses_child"]
    inbox = Inbox(js, sid, set(), lambda reason, failed: None)
    try:
        got = await inbox.take(wanted, key, timeout=5)
        assert got is not None and got[0] == first.seq
        assert await inbox.take(wanted, key, timeout=0) is None
        assert [m.kind for _, m in inbox.buffer] == [wire.INBOX_SIGNAL]
    finally:
        await inbox.close()
    again = Inbox(js, sid, {first.seq}, lambda reason, failed: None)  # the next attempt
    try:
        assert await again.take(wanted, key, timeout=0) is None
    finally:
        await again.close()
    await nc.close()


async def test_a_wait_with_no_time_left_does_not_wait_for_a_malformed_last_message(
    nats_url: str,
) -> None:
    """The inbox's last message is one the runner cannot decode (dropped): the catch-up
    counts it as read."""
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    pub = bus.publisher(nc)
    sid = "ses_01m8cpgk96e6wakscbfn3064zx"
    for _ in range(3000):  # many, so that some come after the wait learned the last one
        await pub.publish(subjects.inbox_subject(sid), b"\xc1not msgpack")
    inbox = Inbox(js, sid, set(), lambda reason, failed: None)
    inbox.CATCH_UP = 3600  # a read that waited for more would outlast the test's timeout
    try:
        async with asyncio.timeout(30):
            assert await inbox.take(["go"], lambda m: m.name, timeout=0) is None
        assert inbox.last_seq == 3000
    finally:
        await inbox.close()
    await nc.close()


async def test_closing_the_inbox_ends_a_catch_up(nats_url: str) -> None:
    """A catch-up whose consumer delivers nothing more (here: a consumer that drops all it
    reads) ends as the inbox is closed, not CATCH_UP seconds later."""
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    sid = "ses_01m8cpgk96e6wakscbfn3064zw"
    go = wire.InboxMessage(kind=wire.INBOX_SIGNAL, name="go")
    await bus.publisher(nc).publish(subjects.inbox_subject(sid), wire.encode(go))
    inbox = Inbox(js, sid, set(), lambda reason, failed: None)

    async def dropped(msg: object) -> None:
        pass

    inbox._on_msg = dropped
    inbox.CATCH_UP = 3600  # a catch-up that went on would outlast the wait below
    looked = asyncio.Event()
    get_last_msg = js.get_last_msg

    async def seen(*a: Any, **kw: Any) -> Any:
        try:
            return await get_last_msg(*a, **kw)
        finally:
            looked.set()

    js.get_last_msg = seen  # type: ignore[method-assign]
    take = asyncio.create_task(inbox.take(["go"], lambda m: m.name, timeout=0))
    await asyncio.wait_for(looked.wait(), 10)
    assert not take.done()  # catching up
    await inbox.close()
    assert await asyncio.wait_for(take, 5) is None
    await nc.close()


async def test_a_handler_polling_a_live_inbox_asks_jetstream_nothing_per_poll(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its consumer has been delivering (``FRESH``) with nothing left to deliver, a
    wait whose time is up does not look up the inbox's last message: a handler polling with
    ``timeout=0`` costs no JetStream request per poll."""
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    sid = "ses_01m8cpgk96e6wakscbfn3064ww"
    other = wire.InboxMessage(kind=wire.INBOX_SIGNAL, name="other")
    await js.publish(subjects.inbox_subject(sid), wire.encode(other))
    lookups: list[str] = []
    get_last_msg = js.get_last_msg

    async def counted(*a: Any, **kw: Any) -> Any:
        lookups.append(a[1] if len(a) > 1 else "")
        return await get_last_msg(*a, **kw)

    monkeypatch.setattr(js, "get_last_msg", counted)
    inbox = Inbox(js, sid, set(), lambda reason, failed: None)
    inbox.FRESH = 0.0  # (delivering "for a while" from the start)
    try:
        assert await inbox.take(["other"], lambda m: m.name, timeout=10) is not None
        for _ in range(50):
            assert await inbox.take(["go"], lambda m: m.name, timeout=0) is None
        assert lookups == []
        # with the consumer new, the same wait looks (once)
        inbox.FRESH = 3600.0
        assert await inbox.take(["go"], lambda m: m.name, timeout=0) is None
        assert lookups == [subjects.inbox_subject(sid)]
    finally:
        await inbox.close()
    await nc.close()
