"""An unexpected error answering a request reaches its caller as which error it was and
where it was logged, never its text (it may quote a statement and what it touched)."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from akcore import bus, subjects
from akcore.errors import AKError


async def test_an_internal_error_names_its_log_entry_not_its_text(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await bus.connect(nats_url, "t")

    async def handle(op: str, args: dict[str, Any]) -> Any:
        raise RuntimeError("UPDATE vars SET value='hunter2' WHERE name='token'")

    await bus.serve_requests(nc, subjects.STORE_ALL, handle, queue="store")
    with caplog.at_level(logging.ERROR, logger="akcore.bus"):
        with pytest.raises(AKError) as caught:
            await bus.store_call(nc, "var.set", {}, timeout=5)
    message = caught.value.message
    assert caught.value.kind == "internal"
    assert "hunter2" not in message and "UPDATE" not in message, message
    found = re.fullmatch(
        r"var\.set failed with RuntimeError: an internal error, logged as error ([0-9a-f]{8}) "
        r"by store \d+",
        message,
    )
    assert found, message
    logged = [r for r in caplog.records if found.group(1) in r.getMessage()]
    assert logged and "hunter2" in str(logged[0].exc_info[1])  # (the log has it all)
    await nc.close()
