"""`ak auth create-token --expires`: a whole number and a unit, or a clear refusal."""

from __future__ import annotations

import pytest
from ak_cli.auth import _seconds
from akcore.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "seconds"), [("90m", 5400), ("12h", 43200), ("30d", 2592000), ("45", 45)]
)
def test_durations(text: str, seconds: int) -> None:
    assert _seconds(text) == seconds


@pytest.mark.parametrize("text", ["3w", "0d", "-1h", "1.5h", "²d", "d", "", "１d"])
def test_what_is_not_a_duration_is_refused_saying_so(text: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a duration"):
        _seconds(text)
