"""Which destinations' deferred events a dispatcher takes back next."""

from __future__ import annotations

from ak_dispatcher.rotation import Rotation


def test_free_places_are_dealt_in_turns_each_up_to_its_share() -> None:
    r = Rotation(total=10, share=4, most=8)
    for key in ("a", "b", "c"):
        assert r.add(key)
    assert r.deal({}, {}) == {"a": 4, "b": 3, "c": 3}


def test_a_destination_holding_its_share_leaves_the_places_to_the_others() -> None:
    r = Rotation(total=64, share=8, most=8)
    r.add("flood")
    assert r.deal({}, {}) == {"flood": 8}
    r.add("victim")  # the flood's events are stuck: the victim still gets its share
    assert r.deal({"flood": 8}, {}) == {"victim": 8}
    assert r.deal({"flood": 8, "victim": 8}, {}) == {}
    assert r.deal({"flood": 8, "victim": 3}, {}) == {"victim": 5}


def test_places_freed_one_at_a_time_go_round_the_destinations() -> None:
    r = Rotation(total=3, share=3, most=8)
    for key in ("a", "b", "c"):
        r.add(key)
    held = {"a": 1, "b": 1}  # one place free each time
    dealt = [k for _ in range(6) for k in r.deal(held, {})]
    assert dealt == ["a", "b", "c", "a", "b", "c"]


def test_a_destination_still_asking_gets_nothing_more_now() -> None:
    r = Rotation(total=10, share=8, most=8)
    r.add("a")
    r.add("b")
    assert r.deal({"a": 2}, {"a": True}) == {"b": 8}


def test_a_newcomer_takes_its_turn_after_those_waiting_in_this_round() -> None:
    r = Rotation(total=1, share=1, most=8)
    r.add("a")
    r.add("b")
    assert r.deal({}, {}) == {"a": 1}
    r.add("c")  # its turn comes once b and a had theirs
    assert r.deal({}, {}) == {"b": 1}
    assert r.deal({}, {}) == {"a": 1}
    assert r.deal({}, {}) == {"c": 1}
    assert r.deal({}, {}) == {"b": 1}


def test_removing_a_destination_keeps_the_turn_where_it_was() -> None:
    r = Rotation(total=1, share=1, most=8)
    for key in ("a", "b", "c"):
        r.add(key)
    assert r.deal({}, {}) == {"a": 1}
    r.remove("a")
    assert r.deal({}, {}) == {"b": 1}
    r.remove("c")
    assert r.deal({}, {}) == {"b": 1}
    r.remove("b")
    assert len(r) == 0 and r.deal({}, {}) == {}


def test_at_most_most_destinations_take_turns() -> None:
    r = Rotation(total=10, share=1, most=2)
    assert r.add("a") and r.add("b")
    assert r.full and not r.add("c") and "c" not in r
    assert r.add("a")  # already there
    r.remove("a")
    assert r.add("c")
