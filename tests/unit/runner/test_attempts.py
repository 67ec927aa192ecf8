"""How a job's deliveries count as attempts before its session has begun."""

from __future__ import annotations

import pytest
from ak_runner.service import retry_delay, waiting_deliveries
from akcore import bus


@pytest.mark.parametrize("limit", [1, 2, 10, 40])
def test_deliveries_that_may_wait_for_created_cover_the_duplicate_window(limit: int) -> None:
    """A job is dropped for a `created` record that never came only once past its limit
    and past the duplicate window: up to then every delivery may have found nothing, and
    none of them may count against the session."""
    waiting = waiting_deliveries(limit)
    assert waiting >= limit
    assert sum(retry_delay(k) for k in range(1, waiting + 1)) >= bus.DUPLICATE_WINDOW
    # ... and no more than that: the first of those delays that reaches the window ends it.
    if waiting > limit:
        assert sum(retry_delay(k) for k in range(1, waiting)) < bus.DUPLICATE_WINDOW


def test_retry_delays_grow_to_half_a_minute() -> None:
    assert [retry_delay(k) for k in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
