"""A project's values store as its runner keeps it on the shared KV bucket: a deleted value
leaves nothing behind (a bucket keeps its delete markers for good otherwise, and a project
that sets and deletes ever new keys grew it without end)."""

from __future__ import annotations

import asyncio

from ak_runner.values import Values
from akcore import bus, natsauth
from akcore.datakey import Keyring
from akcore.values import kv_key
from cryptography.fernet import Fernet

from tests.conftest import connect_as

KEYS = Keyring([Fernet.generate_key()])
STREAM = f"KV_{natsauth.BUCKET_VALUES}"


def test_deleted_values_leave_nothing_in_the_bucket(nats_url: str) -> None:
    async def main() -> None:
        store = await connect_as(nats_url, "store")
        await bus.ensure_streams(store.jetstream())
        runner = await connect_as(nats_url, "runner")
        kv = await bus.values_bucket(runner.jetstream())
        mine, other = Values(kv, "prj_a", KEYS), Values(kv, "prj_b", KEYS)
        await other.apply("kept", "set", [1])
        for i in range(200):  # more than the 64 live keys a project may have
            await mine.apply(f"k{i}", "set", [i])
            assert await mine.apply(f"k{i}", "get", []) == i
            await mine.apply(f"k{i}", "del", [])
        await mine.apply("last", "set", ["x"])
        assert await mine.keys() == ["last"]
        info = await store.jetstream().stream_info(STREAM)
        assert info.state.messages == 2  # "last" and the other project's "kept"
        # A key set again after its delete is a key like any other; deleting one that is
        # not there changes nothing.
        await mine.apply("k0", "set", [5])
        assert await mine.apply("k0", "get", []) == 5
        await mine.apply("gone", "del", [])
        assert await other.apply("kept", "get", []) == 1
        assert sorted(await mine.keys()) == ["k0", "last"]
        await runner.close()
        await store.close()

    asyncio.run(main())


def test_a_marker_left_by_an_older_version_goes_when_keys_are_listed(nats_url: str) -> None:
    async def main() -> None:
        store = await connect_as(nats_url, "store")
        await bus.ensure_streams(store.jetstream())
        runner = await connect_as(nats_url, "runner")
        kv = await bus.values_bucket(runner.jetstream())
        mine = Values(kv, "prj_a", KEYS)
        await mine.apply("old", "set", [1])
        await kv.delete(kv_key("prj_a", "old"))  # what an older runner did: a marker that stays
        # (with the value under it: the bucket keeps versions, see test_kv_durability.py)
        assert (await store.jetstream().stream_info(STREAM)).state.messages == 2
        assert await mine.keys() == []
        assert (await store.jetstream().stream_info(STREAM)).state.messages == 0
        await runner.close()
        await store.close()

    asyncio.run(main())
