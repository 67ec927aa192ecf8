"""Cron parsing and next firing times (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from akcore.cron import CronError, parse

T = datetime(2026, 11, 26, 21, 14, 30, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("* * * * *", "2026-11-26 21:15:00"),
        ("*/15 * * * *", "2026-11-26 21:15:00"),
        ("0 9 * * mon-fri", "2026-11-27 09:00:00"),
        ("* * * * * *", "2026-11-26 21:14:31"),
        ("*/5 * * * * *", "2026-11-26 21:14:35"),
        ("@daily", "2026-11-27 00:00:00"),
        ("@every 10s", "2026-11-26 21:14:40"),
        ("0 0 1 jan *", "2027-01-01 00:00:00"),
        ("30 2 13 * 5", "2026-11-27 02:30:00"),  # day 13 or a Friday
        ("0 12 * * 0", "2026-11-29 12:00:00"),
    ],
)
def test_next_after(expr: str, expected: str) -> None:
    assert parse(expr).next_after(T).strftime("%Y-%m-%d %H:%M:%S") == expected


@pytest.mark.parametrize("bad", ["* * *", "61 * * * *", "* * * * funday", "*/0 * * * *", ""])
def test_invalid(bad: str) -> None:
    with pytest.raises(CronError):
        parse(bad)
