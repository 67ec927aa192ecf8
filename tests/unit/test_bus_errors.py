"""How the NATS client's connection errors read in a service's log."""

from __future__ import annotations

import nats.errors
from akcore.bus import error_text


def test_an_error_without_text_is_named_by_its_kind() -> None:
    # Seen in a chaos soak as "akcore.bus: nats: " and nothing after it.
    assert error_text(TimeoutError()) == "TimeoutError"
    assert error_text(ConnectionResetError()) == "ConnectionResetError"
    assert error_text(ConnectionResetError(104, "Connection reset by peer")) == (
        "[Errno 104] Connection reset by peer"
    )


def test_nats_pys_own_prefix_is_said_once() -> None:
    # "nats: nats: unexpected EOF" before.
    assert error_text(nats.errors.UnexpectedEOF()) == "unexpected EOF"
    assert error_text(nats.errors.StaleConnectionError()) == "stale connection"
