"""How long and how much the system keeps, from ``AK_RETENTION__*`` settings.

JetStream streams are bounded by size with ``discard: new``: when one is full a publish is
refused (a webhook gets 503) rather than older messages silently dropped. An ended
session's journal and inbox are purged once the store has its records; SQL keeps ended
sessions (with their prints, log and spans) and events for a while, then prunes them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

DAY = 24 * 3600.0
GIB = 1 << 30

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY}
_SIZES = {
    "": 1,
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": GIB,
    "kb": 1000,
    "mb": 10**6,
    "gb": 10**9,
}


def parse_duration(name: str, text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"{name} must be a duration such as 30d, 12h or 90s, not {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_size(name: str, text: str) -> int:
    """``4GiB``, ``512MiB``, ``64KiB``, ``1GB`` or plain bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]i?b|b)?\s*", text.lower())
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"{name} must be a size such as 4GiB or 512MiB, not {text!r}")
    return int(m.group(1)) * _SIZES[m.group(2) or ""]


def parse_count(name: str, text: str) -> int:
    """A whole number of at least 1 (``1_000_000`` is fine)."""
    digits = text.strip().replace("_", "")
    if not digits.isdigit() or int(digits) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {text!r}")
    return int(digits)


MIN_EVENTS_AGE = 3600.0


@dataclass(frozen=True)
class Retention:
    events_age: float = 30 * DAY  # AK_EVENTS and the events table
    events_max_bytes: int = 4 * GIB  # the AK_EVENTS stream
    max_events: int = 1_000_000  # the events table
    sessions_age: float = 30 * DAY  # ended sessions, with their records and spans
    max_sessions: int = 1_000_000  # ended sessions kept
    journal_max_bytes: int = 4 * GIB  # each of AK_JOURNAL and AK_INBOX (live sessions only)

    @classmethod
    def from_env(cls) -> Retention:
        """The settings given (``AK_RETENTION__<FIELD>``), defaults for the others."""
        parsers = {
            "events_age": ("EVENTS", parse_duration),
            "events_max_bytes": ("EVENTS_MAX_BYTES", parse_size),
            "max_events": ("MAX_EVENTS", parse_count),
            "sessions_age": ("SESSIONS", parse_duration),
            "max_sessions": ("MAX_SESSIONS", parse_count),
            "journal_max_bytes": ("JOURNAL_MAX_BYTES", parse_size),
        }
        given = {}
        for field_name, (suffix, parse) in parsers.items():
            name = f"AK_RETENTION__{suffix}"
            text = os.environ.get(name, "").strip()
            if text:
                given[field_name] = parse(name, text)
        keep = cls(**given)  # type: ignore[arg-type]
        if keep.events_age < MIN_EVENTS_AGE:
            raise ValueError(
                "AK_RETENTION__EVENTS must be at least 1h: an event older than it is dropped "
                "from AK_EVENTS whether or not it was dispatched, so it must outlast any time "
                "the dispatchers may be down"
            )
        return keep
