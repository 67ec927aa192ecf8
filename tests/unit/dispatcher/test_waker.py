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
    p.later("ses_a", 2_000)
    assert p.due(2_000) == ["ses_a"]


def test_an_entry_round_trips_and_makes_the_wake_job() -> None:
    e = _entry(12, deadline_us=5, inbox_seq=3)
    back = parking.Entry.decode(e.encode())
    assert back == e
    job = back.wake_job()
    assert job.session_id == "ses_x" and job.parked_seq == 12
    headers = parking.wake_headers(back, "ses_x")
    assert headers == {"Nats-Msg-Id": "wake-ses_x-12", "traceparent": "00-tp"}
