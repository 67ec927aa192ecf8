"""A dispatcher, runner or ingress whose secrets key is not the store's stops as it starts,
saying so, instead of sealing what no other service can open (akcore.keycheck)."""

from __future__ import annotations

import asyncio

import pytest
from ak_dispatcher.service import run as run_dispatcher
from ak_ingress.service import run as run_ingress
from ak_runner.service import run as run_runner
from ak_store.service import run as run_store
from akcore import bus, keycheck
from akcore.config import Settings
from akcore.datakey import Keyring
from akcore.errors import AKError
from cryptography.fernet import Fernet

from .conftest import as_service, running

OTHER = Fernet.generate_key()


async def test_the_store_and_a_service_check_each_others_key(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, old = Fernet.generate_key(), Fernet.generate_key()
    monkeypatch.setenv("AK_SECRETS__KEYS", f"{new.decode()},{old.decode()}")  # rotating
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        try:
            for passing in ([new], [new, old], [old, new]):
                await keycheck.check(nc, Keyring(passing))
            # Not restarted with the new key: it cannot open what the store now seals.
            with pytest.raises(AKError, match="it cannot open what the store seals"):
                await keycheck.check(nc, Keyring([old]))
            for failing in ([OTHER], [OTHER, new]):  # a primary key the store lacks
                with pytest.raises(AKError, match="the store cannot open what it seals"):
                    await keycheck.check(nc, Keyring(failing))
        finally:
            await nc.close()


@pytest.mark.parametrize("service", ["dispatcher", "runner", "ingress"])
async def test_a_service_given_another_key_stops_saying_so(
    settings: Settings, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = {"dispatcher": run_dispatcher, "runner": run_runner, "ingress": run_ingress}[service]
    async with running(run_store, settings, "store"):
        monkeypatch.delenv("AK_SECRETS__KEYS", raising=False)
        monkeypatch.setenv("AK_SECRETS__KEY", OTHER.decode())  # the service's, not the store's
        # Never told to stop: it ends only by the check.
        task = asyncio.create_task(run(as_service(settings, service), asyncio.Event()))
        with pytest.raises(AKError) as failed:
            await asyncio.wait_for(task, timeout=60)
        assert failed.value.message == (
            "this service's secrets key is not the store's: the store cannot open what it "
            "seals. Give every store, runner, dispatcher and ingress the same key "
            "(AK_SECRETS__KEY, or AK_SECRETS__KEYS with the primary first; restart the "
            "stores first when rotating): docs/deploy.md"
        )
