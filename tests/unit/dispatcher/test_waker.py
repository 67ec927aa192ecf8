"""The waker's bookkeeping of parked sessions (services/dispatcher/waker.py), with no NATS."""

from __future__ import annotations

from ak_dispatcher.waker import Parked
from akcore import parking, wire


def _entry(seq: int, deadline_us: int = 0, inbox_seq: int = 0) -> parking.Entry:
    job = wire.Job("ses_x", "prj_x", "dep_x", "bld_x", "f.py:h", True, None, None, {})
    return parking.Entry(seq, deadline_us, inbox_seq, wire.encode(job), "00-tp")


def test_deadlines_come_due_in_order_and_once() -> None:
    p = Parked()
    p.learn("ses_b", 7, _entry(5, deadline_us=2_000))
    p.learn("ses_a", 3, _entry(4, deadline_us=1_000))
    p.learn("ses_c", 9, _entry(6))  # no deadline: only its inbox wakes it
    assert p.next_deadline() == 1_000
    assert p.due(999) == []
    assert p.due(1_500) == ["ses_a"]
    assert p.due(5_000) == ["ses_b"]
    assert p.due(10**18) == [] and p.next_deadline() is None


def test_a_forgotten_or_replaced_entry_does_not_come_due() -> None:
    p = Parked()
    p.learn("ses_a", 3, _entry(4, deadline_us=1_000))
    p.learn("ses_a", 8, _entry(9, deadline_us=5_000))  # parked again: a new revision
    p.learn("ses_b", 4, _entry(2, deadline_us=1_000))
    p.forget("ses_b", revision=99)  # another revision's delete: kept
    assert "ses_b" in p.entries
    p.forget("ses_b")
    assert p.next_deadline() == 5_000
    assert p.due(6_000) == ["ses_a"]


def test_an_inbox_message_wakes_only_past_what_the_session_read() -> None:
    p = Parked()
    p.learn("ses_a", 3, _entry(4, inbox_seq=17))
    assert not p.woken_by("ses_a", 17)
    assert p.woken_by("ses_a", 18)
    assert not p.woken_by("ses_other", 100)


def test_a_wake_that_failed_is_looked_at_again() -> None:
    p = Parked()
    p.learn("ses_a", 3, _entry(4))
    p.later("ses_a", 2_000, 3)
    assert p.due(2_000) == ["ses_a"]


def test_a_retry_is_for_the_entry_it_failed_on_not_a_later_parkings() -> None:
    """The session parked again while its wake's delete failed: the later parking keeps
    its own deadline (it is not woken early by the retry)."""
    p = Parked()
    p.learn("ses_a", 3, _entry(4))
    p.learn("ses_a", 7, _entry(9))  # (replaced before the retry was asked for)
    p.later("ses_a", 2_000, 3)
    assert p.due(2_000) == []
    p = Parked()
    p.learn("ses_a", 3, _entry(4))
    p.later("ses_a", 2_000, 3)
    p.learn("ses_a", 7, _entry(9))  # (replaced after)
    assert p.due(2_000) == []


def test_an_entry_round_trips_and_makes_the_wake_job() -> None:
    e = _entry(12, deadline_us=5, inbox_seq=3)
    back = parking.Entry.decode(e.encode())
    assert back == e
    job = back.wake_job()
    assert job.session_id == "ses_x" and job.parked_seq == 12
    headers = parking.wake_headers(back, "ses_x")
    assert headers == {"Nats-Msg-Id": "wake-ses_x-12", "traceparent": "00-tp"}


def test_a_deadline_due_while_a_wake_is_in_flight_is_not_lost() -> None:
    """The session parked again (a new revision, its deadline due too) while the wake of
    its earlier parking was in flight: that deadline comes due once the wake is over (it
    was dropped: the session stayed parked until another message or for ever)."""
    p = Parked()
    p.learn("ses_a", 3, _entry(4, deadline_us=1_000))
    assert p.due(1_000) == ["ses_a"]  # its wake starts: ses_a is busy
    p.learn("ses_a", 8, _entry(9, deadline_us=2_000))  # parked again meanwhile
    assert p.due(5_000, busy={"ses_a"}) == []  # held, not dropped
    p.forget("ses_a", revision=3)  # the earlier wake deletes its own revision only
    p.release("ses_a")
    assert p.due(5_000) == ["ses_a"] and p.entries["ses_a"][0] == 8


def test_delete_markers_are_kept_for_purging_once() -> None:
    p = Parked()
    p.learn("ses_a", 3, _entry(4))
    p.deleted("ses_a", 5)
    assert "ses_a" not in p.entries
    assert p.take_markers() == {"ses_a": 5}
    assert p.take_markers() == {}


def _selective(wants: tuple[str, ...] | None) -> parking.Entry:
    return parking.Entry(4, 0, 10, b"", wants=wants)


def _headers(kind: str, key: str = "") -> dict[str, str]:
    out = {parking.HDR_INBOX_KIND: kind}
    if key:
        out[parking.HDR_INBOX_KEY] = key
    return out


def test_a_parked_wait_wakes_only_for_what_it_takes_or_a_stop() -> None:
    p = Parked()
    wants = (parking.want(wire.INBOX_SIGNAL, "go"), parking.want(wire.INBOX_EVENT, "sub-1"))
    p.learn("ses_a", 3, _selective(wants))
    assert not p.woken_by("ses_a", 11, _headers(wire.INBOX_SIGNAL, "other"))
    assert not p.woken_by("ses_a", 11, _headers(wire.INBOX_EVENT, "sub-2"))
    assert p.woken_by("ses_a", 11, _headers(wire.INBOX_SIGNAL, "go"))
    assert p.woken_by("ses_a", 11, _headers(wire.INBOX_EVENT, "sub-1"))
    assert p.woken_by("ses_a", 11, _headers(wire.INBOX_STOP))
    assert not p.woken_by("ses_a", 10, _headers(wire.INBOX_STOP))  # read before it parked
    # A child's end is taken by next_signal(<child id>), as a signal of that name is.
    p.learn("ses_b", 4, _selective((parking.want(wire.INBOX_SIGNAL, "ses_c"),)))
    assert p.woken_by("ses_b", 11, _headers(wire.INBOX_CHILD_END, "ses_c"))
    # A sleep takes nothing: only a stop wakes it before its deadline.
    p.learn("ses_s", 5, _selective(()))
    assert not p.woken_by("ses_s", 11, _headers(wire.INBOX_SIGNAL, "go"))
    assert p.woken_by("ses_s", 11, _headers(wire.INBOX_STOP))


def test_headers_that_do_not_say_clearly_what_a_message_is_wake() -> None:
    """They come from a boundary: missing, unknown or malformed, the message wakes the
    session (the safe side), and nothing raises."""
    e = _selective((parking.want(wire.INBOX_SIGNAL, "go"),))
    for headers in (
        None,
        {},
        {parking.HDR_INBOX_KIND: "gossip", parking.HDR_INBOX_KEY: "x"},
        {parking.HDR_INBOX_KIND: wire.INBOX_SIGNAL},  # no key
        {parking.HDR_INBOX_KIND: wire.INBOX_SIGNAL, parking.HDR_INBOX_KEY: "x" * 500},
        {parking.HDR_INBOX_KIND: wire.INBOX_SIGNAL, parking.HDR_INBOX_KEY: "a\x00b"},
    ):
        assert e.woken_by(headers), headers


def test_an_entry_of_before_wakes_on_any_message() -> None:
    """An entry without ``wants`` (written by a runner of before) wakes on anything, and
    decodes; an entry with them round-trips."""
    old = wire.pack({"parked_seq": 4, "deadline_us": 0, "inbox_seq": 10, "job": b"j"})
    e = parking.Entry.decode(old)
    assert e.wants is None and e.woken_by(_headers(wire.INBOX_SIGNAL, "other"))
    new = _selective(("name:go",))
    assert parking.Entry.decode(new.encode()) == new
    assert "wants" not in wire.unpack(_selective(None).encode())


def test_the_publishers_headers_say_what_a_wait_takes() -> None:
    sig = wire.InboxMessage(kind=wire.INBOX_SIGNAL, name="go")
    assert parking.want_of(parking.inbox_headers(sig)) == parking.want(wire.INBOX_SIGNAL, "go")
    ev = wire.InboxMessage(kind=wire.INBOX_EVENT, subscription_id="sub-1")
    assert parking.want_of(parking.inbox_headers(ev)) == "event:sub-1"
    stop = wire.InboxMessage(kind=wire.INBOX_STOP, reason="enough")
    assert parking.want_of(parking.inbox_headers(stop)) is None  # wakes any wait
