"""How a job's deliveries count as attempts before its session has begun."""

from __future__ import annotations

from ak_runner.service import retry_delay, waiting_deliveries


def test_deliveries_that_can_come_within_a_time() -> None:
    """A job's deliveries come 1, 2, 4, 8, ... s apart (its naks' delays), at the least:
    within ``waited`` seconds of its first, no more than these can have come."""
    within = {0: 1, 0.9: 1, 1: 2, 2.9: 2, 3: 3, 6.9: 3, 7: 4, 60: 6, 61: 7}
    assert {t: waiting_deliveries(t) for t in within} == within
    assert waiting_deliveries(10**5) == 5 + (10**5 - 31) // 30 + 1


def test_retry_delays_grow_to_half_a_minute() -> None:
    assert [retry_delay(k) for k in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert retry_delay(5000) == 30  # a job naked for hours (2.0 ** 4999 overflows)
