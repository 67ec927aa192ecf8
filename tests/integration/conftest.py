"""In-process services against a real nats-server on a random port."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from ak_store.api import StoreApi
from ak_store.db import open_engine
from akcore import bus
from akcore.config import Settings
from akcore.secrets import Sealer
from cryptography.fernet import Fernet
from nats.aio.client import Client
from sqlalchemy import Engine

from tests.conftest import as_service
from tests.pg import fresh_database

from .helpers import KEYS

Run = Callable[[Settings, asyncio.Event], Awaitable[None]]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every integration test runs against the store on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite'}"
    else:
        with fresh_database() as url:
            yield url


@pytest.fixture
def store(db_dsn: str) -> Iterator[tuple[StoreApi, Engine]]:
    """The store's operations on a fresh database, called directly (no NATS), its data
    keys ``helpers.KEYS``."""
    engine = open_engine(db_dsn)
    yield StoreApi(engine, Sealer(Fernet.generate_key()), KEYS), engine
    engine.dispose()


@pytest.fixture
def settings(
    nats_url: str, db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return Settings(
        nats_url=nats_url,
        http_addr="127.0.0.1:0",
        db_dsn=db_dsn,
        worker_python=sys.executable,  # not a venv: the test's Python has the SDK
    )


@asynccontextmanager
async def running(run: Run, settings: Settings, service: str) -> AsyncIterator[None]:
    """Runs a service's ``run`` in this process until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(as_service(settings, service), stop))
    nc = await bus.connect(settings.nats_url, "test-probe")
    try:
        for _ in range(200):
            if task.done():
                task.result()
            if await bus.ping_service(nc, service, timeout=0.2):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{service} did not come up")
        yield
    finally:
        await nc.close()
        stop.set()
        await asyncio.wait_for(task, timeout=15)


@asynccontextmanager
async def dispatching(
    settings: Settings, let_go: asyncio.Event | None = None, dispatchers: int = 1
) -> AsyncIterator[Client]:
    """The store and ``dispatchers`` dispatchers running, and a connection to their NATS;
    ``let_go`` (what a test holds filters back with) is set before they stop, so that a
    failed test's dispatcher stops."""
    from ak_dispatcher.service import run as run_dispatcher
    from ak_store.service import run as run_store

    async with AsyncExitStack() as services:
        await services.enter_async_context(running(run_store, settings, "store"))
        for _ in range(dispatchers):
            await services.enter_async_context(running(run_dispatcher, settings, "dispatcher"))
        nc = await bus.connect(settings.nats_url, "t")
        try:
            yield nc
        finally:
            if let_go is not None:
                let_go.set()
            await nc.close()
