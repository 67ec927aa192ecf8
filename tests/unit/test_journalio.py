"""Which failures an attempt retries (they may pass) and which end its session."""

from __future__ import annotations

import pytest
from akcore.bus import may_pass
from akcore.errors import InvalidArgument, Unavailable
from nats.errors import ConnectionClosedError, MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError


@pytest.mark.parametrize(
    "error",
    [
        NatsTimeout(),
        NoRespondersError(),
        ConnectionClosedError(),
        ServiceUnavailableError(code=503, err_code=10008),  # JetStream busy or electing
        APIError(code=409, err_code=10158),  # a clustered stream: the same id on its way in
        Unavailable("the store did not answer"),
        TimeoutError(),
        ConnectionResetError(),
    ],
)
def test_failures_that_may_pass(error: Exception) -> None:
    assert may_pass(error)


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError(code=400, err_code=10071),
        NotFoundError(code=404, err_code=10059),
        InvalidArgument("no"),
        KeyError("step"),
        ValueError("bad"),
        MaxPayloadError(),
    ],
)
def test_failures_that_would_repeat(error: Exception) -> None:
    assert not may_pass(error)
