"""The scheduler waits for the store quietly while it starts, and says so once when the
wait is long."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from ak_dispatcher.scheduler import LONG_WAIT, Scheduler
from akcore.errors import Unavailable


def test_a_short_wait_is_quiet_and_a_long_one_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Scheduler(nc=None, telemetry=None)  # type: ignore[arg-type]
    away = Unavailable("store did not answer 'schedule.list'")
    caplog.set_level(logging.INFO, logger="ak_dispatcher.scheduler")

    def warnings() -> list[Any]:
        return [r for r in caplog.records if r.levelno >= logging.WARNING]

    for t in (100.0, 101.0, 100.0 + LONG_WAIT - 0.5):
        s._waiting(t, away)
    assert warnings() == []
    s._waiting(100.0 + LONG_WAIT, away)
    s._waiting(100.0 + LONG_WAIT + 5, away)
    (said,) = warnings()
    assert f"no schedule triggers for {LONG_WAIT:.0f} s so far" in said.getMessage()
