"""Timestamps as users see them (AutoKitteh prints Go's ``time.Time.String()`` in UTC)."""

from __future__ import annotations

from datetime import UTC, datetime


def now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


def go_string(us: int) -> str:
    """``2025-01-30 12:34:56.123456 +0000 UTC`` with trailing fraction zeros trimmed, like Go."""
    dt = from_us(us)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    base = dt.strftime("%Y-%m-%d %H:%M:%S")
    return f"{base}.{frac} +0000 UTC" if frac else f"{base} +0000 UTC"


def rfc3339(us: int) -> str:
    return from_us(us).isoformat().replace("+00:00", "Z")


def parse_us(text: str) -> int:
    """Microseconds since the epoch of an RFC 3339 time; one without a zone is UTC.

    Raises:
        ValueError: ``text`` is not such a time.
    """
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)
