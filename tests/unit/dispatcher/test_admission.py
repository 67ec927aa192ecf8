"""Which events wait in the dispatcher for their filters, and which it defers."""

from __future__ import annotations

import contextlib

from ak_dispatcher.admission import LOOK_EVERY, Admission


def test_a_destination_with_its_share_waiting_defers_alone() -> None:
    a = Admission(per_destination=2, total=10)
    with contextlib.ExitStack() as held:
        for _ in range(2):
            assert a.admits("trg_flood")
            held.enter_context(a.waiting("trg_flood", deferred=False))
        assert not a.admits("trg_flood")
        assert a.admits("trg_other")
    assert a.admits("trg_flood")  # judged: room again


def test_all_destinations_together_wait_up_to_the_total() -> None:
    a = Admission(per_destination=2, total=3)
    with contextlib.ExitStack() as held:
        for key in ("trg_a", "trg_b", "trg_c"):
            held.enter_context(a.waiting(key, deferred=False))
        assert a.judging == 3
        assert not a.admits("trg_d")
    assert a.judging == 0 and a.admits("trg_d")


def test_events_taken_back_count_for_their_destination_not_the_total() -> None:
    a = Admission(per_destination=2, total=2)
    with a.waiting("trg_a", deferred=True), a.waiting("trg_a", deferred=True):
        assert a.judging == 0
        assert not a.admits("trg_a")  # its earlier events go first
        assert a.admits("trg_b")


def test_a_destination_defers_until_its_deferred_events_are_taken_back() -> None:
    a = Admission(per_destination=2, total=10)
    assert a.deferred("trg_a")  # the first: the dispatcher says so once
    assert not a.deferred("trg_a")
    assert not a.admits("trg_a")  # room, but it would overtake its deferred events
    a.taken_back("trg_a")
    assert not a.admits("trg_a")
    a.taken_back("trg_a")
    assert a.admits("trg_a")
    a.taken_back("trg_a")  # taken back again (redelivered): no debt
    assert a.admits("trg_a") and a.deferred("trg_a")


def test_deferred_events_another_dispatcher_took_back_are_looked_for_now_and_then() -> None:
    a = Admission(per_destination=2, total=10)
    assert not a.should_look("trg_a", 0.0)  # nothing deferred
    a.deferred("trg_a")
    assert a.should_look("trg_a", 100.0)
    assert not a.should_look("trg_a", 100.0 + LOOK_EVERY / 2)
    assert a.should_look("trg_a", 100.0 + LOOK_EVERY)
    with a.waiting("trg_a", deferred=True), a.waiting("trg_a", deferred=True):
        assert not a.should_look("trg_a", 1000.0)  # no room anyway: no need to look
    a.gone("trg_a")  # none left on AK_DEFERRED
    assert a.admits("trg_a") and not a.should_look("trg_a", 2000.0)
