"""A project's values under concurrent sessions on several runners (connections of their
own): set, del, add and check_and_set on the same keys stay atomic with deletes purging
their markers, and the 64-key limit holds when sessions add keys at once."""

from __future__ import annotations

import asyncio
import random

from ak_runner.values import MAX_KEYS, Values
from akcore import bus, natsauth
from akcore.datakey import Keyring
from akcore.errors import InvalidArgument
from cryptography.fernet import Fernet

from tests.conftest import connect_as

KEYS = Keyring([Fernet.generate_key()])
STREAM = f"KV_{natsauth.BUCKET_VALUES}"


async def _runners(nats_url: str, n: int):
    store = await connect_as(nats_url, "store")
    await bus.ensure_streams(store.jetstream())
    conns = [await connect_as(nats_url, "runner") for _ in range(n)]
    kvs = [await bus.values_bucket(c.jetstream()) for c in conns]
    return store, conns, kvs


def test_adds_are_not_lost_across_deletes(nats_url: str) -> None:
    """Adds interleaved with deletes: every add's result is the count since the last delete
    it followed; the final value is the adds after the last delete that took effect. Checked
    by: total of results of adds that saw a given 'epoch' is consistent, and a set after
    every task is done is never removed by a late purge."""

    async def main() -> None:
        store, conns, kvs = await _runners(nats_url, 4)
        vals = [Values(kv, "prj_a", KEYS) for kv in kvs]
        adds = 0
        dels = 0

        async def adder(v: Values) -> None:
            nonlocal adds
            for _ in range(60):
                await v.apply("n", "add", [1])
                adds += 1

        async def deleter(v: Values) -> None:
            nonlocal dels
            for _ in range(30):
                await v.apply("n", "del", [])
                dels += 1
                await asyncio.sleep(random.random() * 0.01)

        async def setter(v: Values) -> None:
            for i in range(30):
                await v.apply("s", "set", [i])
                await v.apply("s", "del", [])
                await v.apply("s", "check_and_set", [None, i])
                await v.keys()

        await asyncio.gather(
            adder(vals[0]), adder(vals[1]), deleter(vals[2]), setter(vals[3]), setter(vals[0])
        )
        # Quiet now: one last set must stay, and nothing but live keys in the stream.
        await vals[1].apply("n", "set", [42])
        await vals[2].keys()
        assert await vals[3].apply("n", "get", []) == 42
        info = await store.jetstream().stream_info(STREAM, subjects_filter=">")
        live = await vals[0].keys()
        assert info.state.messages == len(live), (info.state.subjects, live)
        for c in conns:
            await c.close()
        await store.close()

    asyncio.run(main())


def test_add_counts_exactly_without_deletes_but_with_purges_of_other_keys(nats_url: str) -> None:
    async def main() -> None:
        store, conns, kvs = await _runners(nats_url, 3)
        vals = [Values(kv, "prj_a", KEYS) for kv in kvs]

        async def adder(v: Values) -> list[int]:
            return [await v.apply("n", "add", [1]) for _ in range(80)]

        async def churn(v: Values) -> None:
            for i in range(80):
                await v.apply(f"x{i % 5}", "set", [i])
                await v.apply(f"x{i % 5}", "del", [])
                await v.keys()

        a, b, _ = await asyncio.gather(adder(vals[0]), adder(vals[1]), churn(vals[2]))
        assert sorted(a + b) == list(range(1, 161))
        assert await vals[2].apply("n", "get", []) == 160
        for c in conns:
            await c.close()
        await store.close()

    asyncio.run(main())


def test_the_key_limit_holds_under_concurrent_creates(nats_url: str) -> None:
    async def main() -> int:
        store, conns, kvs = await _runners(nats_url, 4)
        vals = [Values(kv, "prj_a", KEYS) for kv in kvs]
        for i in range(MAX_KEYS - 4):
            await vals[0].apply(f"k{i}", "set", [i])

        async def create(i: int) -> None:
            try:
                await vals[i % 4].apply(f"new{i}", "set", [i])
            except InvalidArgument:
                pass

        await asyncio.gather(*(create(i) for i in range(40)))
        n = len(await vals[0].keys())
        for c in conns:
            await c.close()
        await store.close()
        return n

    n = asyncio.run(main())
    assert n <= MAX_KEYS, f"{n} keys live, over the limit of {MAX_KEYS}"


def test_a_set_racing_a_delete_never_fails(nats_url: str) -> None:
    """Two sessions (two runners) set and delete the same key: every operation succeeds
    (a set that finds the key's delete marker purged under it is a conflict, tried again;
    nats-py's ``kv.create`` raised KeyNotFoundError there)."""

    async def main() -> dict[str, int]:
        store, conns, kvs = await _runners(nats_url, 2)
        vals = [Values(kv, "prj_a", KEYS) for kv in kvs]
        errors: dict[str, int] = {}

        async def loop(v: Values) -> None:
            for i in range(150):
                for op, args in (("set", [i]), ("del", [])):
                    try:
                        await v.apply("s", op, args)
                    except Exception as e:
                        name = f"{op}: {type(e).__name__}: {e}"
                        errors[name] = errors.get(name, 0) + 1

        await asyncio.gather(loop(vals[0]), loop(vals[1]))
        for c in conns:
            await c.close()
        await store.close()
        return errors

    errors = asyncio.run(main())
    assert not errors, errors


class _Overtaken:
    """The values bucket of a session that loses its races: before each of its writes,
    another runner's session (its own connection) changes the same key first, ``times``
    times. Real conflicts from the server, made deterministic."""

    def __init__(self, kv, other: Values, key: str, times: int) -> None:
        self._kv, self._other, self._key, self.left = kv, other, key, times

    def __getattr__(self, name: str):
        return getattr(self._kv, name)

    async def update(self, *args, **kwargs):
        if self.left:
            self.left -= 1
            await self._other.apply(self._key, "add", [1])
        return await self._kv.update(*args, **kwargs)


def test_a_session_that_loses_many_races_in_a_row_still_succeeds(nats_url: str) -> None:
    """Losing 150 races in a row (earlier, 100 ended the operation with an error) is only a
    delay: the add lands once, after the other session's 150."""

    async def main() -> tuple[int, int]:
        store, conns, kvs = await _runners(nats_url, 2)
        other = Values(kvs[1], "prj_a", KEYS)
        slow = Values(_Overtaken(kvs[0], other, "n", 150), "prj_a", KEYS)
        mine = await slow.apply("n", "add", [1000])
        final = await other.apply("n", "get", [])
        for c in conns:
            await c.close()
        await store.close()
        return mine, final

    assert asyncio.run(main()) == (1150, 1150)


def test_a_key_that_never_stops_changing_ends_with_a_clear_error(
    nats_url: str, monkeypatch
) -> None:
    import ak_runner.values as values

    monkeypatch.setattr(values, "CONFLICT_PATIENCE", 0.5)

    async def main() -> tuple[str, int]:
        store, conns, kvs = await _runners(nats_url, 2)
        other = Values(kvs[1], "prj_a", KEYS)
        slow = Values(_Overtaken(kvs[0], other, "n", 10**9), "prj_a", KEYS)
        try:
            await slow.apply("n", "set", ["mine"])
        except InvalidArgument as e:
            message = str(e)
        else:
            message = "no error"
        final = await other.apply("n", "get", [])
        for c in conns:
            await c.close()
        await store.close()
        return message, final

    message, final = asyncio.run(main())
    assert message.startswith("value 'n' is changing too often to update it"), message
    assert "try again later" in message
    assert isinstance(final, int) and final > 0  # the other session's adds stand, not "mine"
