"""The store answers the reads on every webhook's and session's path beside the rest: one
slow request (a page of sessions, an export) held every other project's webhook lookups,
dispatch targets, vars and builds behind it, since the store answered one request at a
time."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from ak_store.api import StoreApi
from ak_store.service import run as run_store
from akcore import bus
from akcore.config import Settings
from akcore.errors import NotFound

from .conftest import running


async def test_hot_reads_are_answered_while_a_slow_request_runs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, inside = threading.Event(), threading.Event()
    listed = StoreApi.project_list
    order: list[str] = []

    def slow_list(self: StoreApi, req: Any) -> list[dict[str, Any]]:
        inside.set()
        gate.wait(60)  # (held until the test lets it go)
        order.append("list")
        return listed(self, req)

    got = StoreApi.project_get

    def recorded_get(self: StoreApi, req: Any) -> dict[str, Any]:
        order.append("get")
        return got(self, req)

    monkeypatch.setattr(StoreApi, "project_list", slow_list)
    monkeypatch.setattr(StoreApi, "project_get", recorded_get)
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        try:
            slow = asyncio.create_task(bus.store_call(nc, "project.list", {}, timeout=60))
            assert await asyncio.to_thread(inside.wait, 30)
            behind = asyncio.create_task(
                bus.store_call(nc, "project.get", {"project": "nope"}, timeout=60)
            )
            async with asyncio.timeout(20):  # (one at a time, they would wait a minute)
                with pytest.raises(NotFound):
                    await bus.store_call(nc, "webhook.lookup", {"slug": "nope"})
                env = await bus.store_call(nc, "session.env", {"project_id": "prj_none"})
                assert "store_public_url" in env
                states = await bus.store_call(nc, "session.states", {"session_ids": ["ses_x"]})
                assert states == {}
            # The rest still go one at a time, in the order they came.
            assert not behind.done() and order == []
            gate.set()
            assert await slow == []
            with pytest.raises(NotFound):
                await behind
            assert order == ["list", "get"]
        finally:
            gate.set()
            await nc.close()
