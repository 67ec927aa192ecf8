"""A wait whose time is up still takes a message its inbox held before: the inbox's
consumer, made only as the wait begins, delivers what the inbox holds a moment later."""

from __future__ import annotations

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
