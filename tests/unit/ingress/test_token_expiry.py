"""When a new API token expires: asked for, or as long as the token that makes it."""

from __future__ import annotations

import pytest
from ak_ingress.commands import _expiry
from akcore import timefmt, tokens
from akcore.errors import InvalidArgument


def test_a_token_lasts_what_was_asked_or_as_long_as_its_maker() -> None:
    now = timefmt.now_us()
    assert _expiry(0, 0) == 0  # a maker that never expires makes one that never does
    assert _expiry(0, now + 5_000_000) == now + 5_000_000
    assert 0 <= _expiry(3600, 0) - (now + 3_600_000_000) < 60_000_000
    assert _expiry(60, now + 3_600_000_000) <= now + 3_600_000_000


@pytest.mark.parametrize("expires_in", [-1, tokens.MAX_EXPIRES_IN + 1])
def test_an_expiry_out_of_range_is_refused(expires_in: int) -> None:
    with pytest.raises(InvalidArgument, match="a token expires within 100 years"):
        _expiry(expires_in, 0)


def test_a_token_that_expires_makes_none_that_outlive_it() -> None:
    maker = timefmt.now_us() + 60_000_000
    with pytest.raises(InvalidArgument, match="and the tokens it makes may not outlive it"):
        _expiry(3600, maker)
