"""bus.serve_requests / bus.store_call: answers, errors, and answers too big to send."""

from __future__ import annotations

from typing import Any

import pytest
from akcore import bus, subjects
from akcore.errors import InvalidArgument, NotFound


async def test_answers_errors_and_oversized_answers(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")

    async def handle(op: str, args: dict[str, Any]) -> Any:
        if op == "big.get":
            return b"x" * (nc.max_payload + 1)
        if op == "thing.get":
            return {"name": args["name"]}
        raise NotFound(f"no {op}")

    await bus.serve_requests(nc, subjects.store_subject(">"), handle, queue="test")
    assert await bus.store_call(nc, "thing.get", {"name": "a"}) == {"name": "a"}
    with pytest.raises(NotFound, match="no other.get"):
        await bus.store_call(nc, "other.get", {})
    # Too big for one message: the caller hears why at once instead of timing out.
    with pytest.raises(InvalidArgument, match="over the .* byte message limit: ask for less"):
        await bus.store_call(nc, "big.get", {}, timeout=2)
    # And the service still answers.
    assert await bus.store_call(nc, "thing.get", {"name": "b"}) == {"name": "b"}
    await nc.close()
