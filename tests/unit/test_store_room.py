"""The order in which the store ends sessions when a session stream nearly fills: the
largest session of the project holding the most, each time."""

from __future__ import annotations

from ak_store.room import Holder, _largest_first

MIB = 1 << 20


def test_the_project_holding_the_most_loses_its_largest_sessions_first() -> None:
    hog = [Holder(f"h{i}", "hog", 40 * MIB) for i in range(3)]  # 120 MiB
    many = [Holder(f"m{i}", "many", 10 * MIB) for i in range(9)]  # 90 MiB
    small = [Holder("s0", "small", 1 * MIB), Holder("s1", "small", 30 * MIB)]  # 31 MiB
    order = [h.session_id for h in _largest_first([*small, *many, *hog])]
    # hog 120 -> 80, many 90 -> 80, hog 80 -> 40, many 80 -> 40, hog 40 -> 0, many 40 ->
    # 30, then the small project's 30 MiB session (it holds 31), and so on.
    assert order == [
        *("h2", "m8", "h1", "m7", "m6", "m5", "m4", "h0", "m3"),
        *("s1", "m2", "m1", "m0", "s0"),
    ]
