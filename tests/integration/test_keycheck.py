"""A dispatcher, runner or ingress whose secrets key is not the store's stops as it starts,
saying so, instead of sealing what no other service can open (akcore.keycheck)."""

from __future__ import annotations

import asyncio

import pytest
from ak_dispatcher.service import run as run_dispatcher
from ak_ingress.service import run as run_ingress
from ak_runner.service import run as run_runner
from ak_store import keycanary
from ak_store.service import run as run_store
from akcore import bus, datakey, keycheck, natsauth
from akcore.config import Settings, data_home
from akcore.datakey import Keyring
from akcore.errors import AKError
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlmodel import create_engine

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
        store_key = (data_home() / "secrets.key").read_bytes().strip()
        store_id = datakey.key_id(datakey.derive(store_key)).hex()
        assert failed.value.message == (
            "this service's secrets keys cannot open the key canary the stores sealed (with "
            f"key id {store_id}): give every store, runner, dispatcher and ingress the same "
            "keys (AK_SECRETS__KEY, or AK_SECRETS__KEYS with the primary first, or the lines "
            "of secrets.key in the data home): docs/deploy.md"
        )
        # Holding the store's key too, with another first: what it seals, the store cannot
        # open.
        monkeypatch.setenv("AK_SECRETS__KEYS", f"{OTHER.decode()},{store_key.decode()}")
        task = asyncio.create_task(run(as_service(settings, service), asyncio.Event()))
        with pytest.raises(AKError, match="the store cannot open what it seals"):
            await asyncio.wait_for(task, timeout=60)


async def _store_runs(settings: Settings, keys: list[bytes], monkeypatch) -> None:
    """Starts a store with ``keys`` and stops it once it serves (it has settled the canary)."""
    monkeypatch.setenv("AK_SECRETS__KEYS", ",".join(k.decode() for k in keys))
    async with running(run_store, settings, "store"):
        pass


async def _store_fails(settings: Settings, keys: list[bytes], monkeypatch) -> str:
    monkeypatch.setenv("AK_SECRETS__KEYS", ",".join(k.decode() for k in keys))
    with pytest.raises(AKError) as failed:
        await asyncio.wait_for(run_store(as_service(settings, "store"), asyncio.Event()), 60)
    return failed.value.message


@pytest.mark.parametrize("service", ["dispatcher", "runner", "ingress"])
async def test_a_service_given_another_key_stops_while_the_store_is_away(
    settings: Settings, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The canary the store sealed in JetStream tells it: no store needed (an ingress
    restarted so would otherwise accept webhooks whose sessions all end in ERROR)."""
    run = {"dispatcher": run_dispatcher, "runner": run_runner, "ingress": run_ingress}[service]
    mine = Fernet.generate_key()
    await _store_runs(settings, [mine], monkeypatch)
    monkeypatch.setenv("AK_SECRETS__KEYS", OTHER.decode())
    task = asyncio.create_task(run(as_service(settings, service), asyncio.Event()))
    with pytest.raises(AKError, match="cannot open the key canary the stores sealed"):
        await asyncio.wait_for(task, timeout=60)
    nc = await bus.connect(settings.nats_url, "t")
    try:  # and the store's key opens it, still with no store
        assert await keycheck.canary(nc.jetstream(), Keyring([mine]))
        assert not await bus.ping_service(nc, "store", timeout=0.2)
    finally:
        await nc.close()


async def test_a_store_given_a_replaced_key_stops_until_told_the_old_one_is_lost(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    await _store_runs(settings, [old], monkeypatch)
    message = await _store_fails(settings, [new], monkeypatch)
    old_id = datakey.key_id(datakey.derive(old)).hex()
    assert message.startswith(
        f"the secrets key that sealed this system's data (key id {old_id}) is not among "
        "this store's keys: it was replaced instead of rotated"
    ), message
    assert message.endswith(f"stop every store and start one with AK_SECRETS__LOST_KEY={old_id}")
    assert old.decode() not in message and new.decode() not in message
    monkeypatch.setenv("AK_SECRETS__LOST_KEY", "0badbeef")  # not that key: still stops
    assert "AK_SECRETS__LOST_KEY" in await _store_fails(settings, [new], monkeypatch)
    monkeypatch.setenv("AK_SECRETS__LOST_KEY", old_id.upper())  # (either case)
    # Not while a store runs: it may hold the key (this one would be the misconfigured one).
    monkeypatch.setenv("AK_SECRETS__KEYS", old.decode())
    async with running(run_store, settings, "store"):
        assert "another store is running" in await _store_fails(settings, [new], monkeypatch)
    await _store_runs(settings, [new], monkeypatch)
    monkeypatch.delenv("AK_SECRETS__LOST_KEY")
    await _store_runs(settings, [new], monkeypatch)  # and from now on without it
    nc = await bus.connect(settings.nats_url, "t")
    try:
        assert await keycheck.canary(nc.jetstream(), Keyring([new]))
        with pytest.raises(AKError, match="cannot open the key canary"):
            await keycheck.canary(nc.jetstream(), Keyring([old]))
    finally:
        await nc.close()


async def test_a_second_store_given_another_key_stops(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Fernet.generate_key(), Fernet.generate_key()
    monkeypatch.setenv("AK_SECRETS__KEYS", first.decode())
    async with running(run_store, settings, "store"):
        message = await _store_fails(settings, [second], monkeypatch)
        assert "is not among this store's keys" in message
        nc = await bus.connect(settings.nats_url, "t")
        try:  # the first one serves on, and the canary is still its own
            assert await bus.ping_service(nc, "store", timeout=2)
            assert await keycheck.canary(nc.jetstream(), Keyring([first]))
        finally:
            await nc.close()


async def test_rotation_seals_the_canary_again_with_the_new_key(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    await _store_runs(settings, [old], monkeypatch)
    await _store_runs(settings, [new, old], monkeypatch)  # rotating: the new key first
    nc = await bus.connect(settings.nats_url, "t")
    try:  # (no store running) services given the new key pass; one left with the old fails
        for passing in ([new], [new, old], [old, new]):
            assert await keycheck.canary(nc.jetstream(), Keyring(passing))
        with pytest.raises(AKError, match="cannot open the key canary"):
            await keycheck.canary(nc.jetstream(), Keyring([old]))
    finally:
        await nc.close()
    await _store_runs(settings, [new], monkeypatch)  # the old key dropped in the end
    assert "is not among" in await _store_fails(settings, [old], monkeypatch)


async def test_a_canary_deleted_by_hand_is_sealed_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting the canary in JetStream (a NATS administrator: only stores may write it):
    the next store seals it again with its key (it once went round forever, writing
    against the delete marker's revision as if there were nothing)."""
    key = Fernet.generate_key()
    await _store_runs(settings, [key], monkeypatch)
    nc = await bus.connect(settings.nats_url, "t")
    try:
        kv = await nc.jetstream().key_value(natsauth.BUCKET_KEYS)
        for gone in (kv.delete, kv.purge):
            await gone(keycheck.CANARY)
            assert not await keycheck.canary(nc.jetstream(), Keyring([key]))  # none now
            await asyncio.wait_for(_store_runs(settings, [key], monkeypatch), 60)
            assert await keycheck.canary(nc.jetstream(), Keyring([key]))
    finally:
        await nc.close()


async def test_a_store_given_another_key_stops_even_when_jetstream_lost_its_canary(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JetStream lost or reset on its own (its canary gone) while the database keeps what
    the old key sealed: the database's canary stops a store given another key, before it
    seals a new canary in JetStream."""
    first, second = Fernet.generate_key(), Fernet.generate_key()
    await _store_runs(settings, [first], monkeypatch)
    nc = await bus.connect(settings.nats_url, "t")
    try:
        kv = await nc.jetstream().key_value(natsauth.BUCKET_KEYS)
        await kv.purge(keycheck.CANARY)
        first_id = datakey.key_id(datakey.derive(first)).hex()
        message = await _store_fails(settings, [second], monkeypatch)
        assert message.startswith(
            f"the secrets key that sealed this system's data (key id {first_id}) is not among "
            "this store's keys"
        ), message
        assert not await keycheck.canary(nc.jetstream(), Keyring([second]))  # not sealed
        await asyncio.wait_for(_store_runs(settings, [first], monkeypatch), 60)
        assert await keycheck.canary(nc.jetstream(), Keyring([first]))
        # Told the old key is lost for good, a store seals both anew.
        monkeypatch.setenv("AK_SECRETS__LOST_KEY", first_id)
        await asyncio.wait_for(_store_runs(settings, [second], monkeypatch), 60)
        monkeypatch.delenv("AK_SECRETS__LOST_KEY")
        await asyncio.wait_for(_store_runs(settings, [second], monkeypatch), 60)
        assert await keycheck.canary(nc.jetstream(), Keyring([second]))
    finally:
        await nc.close()


async def test_a_database_from_before_its_canary_is_not_sealed_by_a_wrong_key(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of an earlier version has no canary: a store given another key stops on
    JetStream's before it seals the database's (else the right key would be refused next)."""
    right, wrong = Fernet.generate_key(), Fernet.generate_key()
    await _store_runs(settings, [right], monkeypatch)
    engine = create_engine(settings.db_dsn)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM key_canary"))
    assert "is not among this store's keys" in await _store_fails(settings, [wrong], monkeypatch)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM key_canary")).scalar() == 0
    await asyncio.wait_for(_store_runs(settings, [right], monkeypatch), 60)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM key_canary")).scalar() == 1
    engine.dispose()
    assert "is not among this store's keys" in await _store_fails(settings, [wrong], monkeypatch)


class Killed(BaseException):
    """The store's process ended here (kill -9, the node lost)."""


async def test_canaries_split_by_a_store_killed_between_them_can_be_given_up_together(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store killed during a rotation after it sealed JetStream's canary and before the
    database's: the two name different keys. With both keys lost, the store says to name
    both, and `AK_SECRETS__LOST_KEY=<one>,<other>` goes on (one id at a time went round)."""
    k1, k2, fresh = Fernet.generate_key(), Fernet.generate_key(), Fernet.generate_key()
    await _store_runs(settings, [k1], monkeypatch)

    async def dies(*_args: object) -> None:
        raise Killed()

    with monkeypatch.context() as m:
        m.setattr(keycanary, "settle", dies)
        m.setenv("AK_SECRETS__KEYS", f"{k2.decode()},{k1.decode()}")
        with pytest.raises(Killed):
            await asyncio.wait_for(run_store(as_service(settings, "store"), asyncio.Event()), 60)
    id1, id2 = (datakey.key_id(datakey.derive(k)).hex() for k in (k1, k2))
    said = await _store_fails(settings, [fresh], monkeypatch)
    assert said.endswith(f"AK_SECRETS__LOST_KEY={id1}"), said  # the database's first
    monkeypatch.setenv("AK_SECRETS__LOST_KEY", id1)
    said = await _store_fails(settings, [fresh], monkeypatch)
    assert f"(key id {id2})" in said, said
    assert said.endswith(f"AK_SECRETS__LOST_KEY={','.join(sorted([id1, id2]))}"), said
    monkeypatch.setenv("AK_SECRETS__LOST_KEY", f"{id2}, {id1.upper()}")
    await asyncio.wait_for(_store_runs(settings, [fresh], monkeypatch), 60)
    monkeypatch.delenv("AK_SECRETS__LOST_KEY")
    await asyncio.wait_for(_store_runs(settings, [fresh], monkeypatch), 60)


async def test_an_altered_database_canary_stops_the_store_saying_so(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Fernet.generate_key()
    await _store_runs(settings, [key], monkeypatch)
    engine = create_engine(settings.db_dsn)
    with engine.begin() as conn:
        conn.execute(text("UPDATE key_canary SET sealed = :x"), {"x": b"written by hand"})
    engine.dispose()
    message = await _store_fails(settings, [key], monkeypatch)
    assert message.startswith(
        "the secrets key's canary in the database (table key_canary) is not a value any "
        "store sealed"
    ), message
    monkeypatch.setenv("AK_SECRETS__LOST_KEY", "malformed")
    await asyncio.wait_for(_store_runs(settings, [key], monkeypatch), 60)


async def test_an_altered_canary_stops_the_store_saying_so(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Fernet.generate_key()
    await _store_runs(settings, [key], monkeypatch)
    nc = await bus.connect(settings.nats_url, "t")
    try:
        kv = await nc.jetstream().key_value(natsauth.BUCKET_KEYS)
        good = (await kv.get(keycheck.CANARY)).value
        for bad in (good[:-1] + bytes([good[-1] ^ 1]), b"written by hand"):
            await kv.put(keycheck.CANARY, bad)
            message = await _store_fails(settings, [key], monkeypatch)
            assert message.startswith(
                "the secrets key's canary in the KV bucket AK_KEYS is not a value any store "
                "sealed (it was altered, or written by hand)"
            ), message
        monkeypatch.setenv("AK_SECRETS__LOST_KEY", "malformed")
        await _store_runs(settings, [key], monkeypatch)
        assert await keycheck.canary(nc.jetstream(), Keyring([key]))
    finally:
        await nc.close()
