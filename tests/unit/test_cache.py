"""StoreCache: answers kept until a change notice, and never more than MAX_KEPT of them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from akcore import bus, subjects, wire
from akcore.cache import StoreCache
from akcore.errors import NotFound
from nats.aio.msg import Msg


async def test_kept_answers_are_bounded_and_forgotten_on_change(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")
    asked: list[str] = []

    async def store(msg: Msg) -> None:  # a store that knows no webhook
        slug = wire.decode(wire.StoreRequest, msg.data).args["slug"]
        asked.append(slug)
        reply = wire.StoreReply(ok=False, error_kind="not_found", error=f"no {slug}")
        await msg.respond(wire.encode(reply))

    await nc.subscribe(subjects.store_subject("webhook.lookup"), cb=store)
    cache = StoreCache(ttl=3600)
    cache.MAX_KEPT = 3
    await cache.watch(nc)

    async def lookup(slug: str) -> Any:
        with pytest.raises(NotFound, match=f"no {slug}"):
            await cache.call(nc, "webhook.lookup", {"slug": slug}, slug)

    for slug in ("a", "a", "b", "c"):
        await lookup(slug)
    assert asked == ["a", "b", "c"]  # the second "a" was kept
    await lookup("d")  # a fourth key: the three kept ones are let go
    await lookup("a")
    assert asked == ["a", "b", "c", "d", "a"]
    heard = cache._generation
    await nc.publish(subjects.CHANGED, b"var.set")
    await bus.flush(nc)  # (the notice is back: its callback runs as a task of its own)
    for _ in range(500):
        if cache._generation != heard:
            break
        await asyncio.sleep(0.01)
    await lookup("d")
    assert asked[-1] == "d"  # forgotten on the change notice
    await nc.close()


async def test_callers_of_an_expired_answer_ask_the_store_once(nats_url: str) -> None:
    """Events arriving together when an answer has expired wait for one store request."""
    nc = await bus.connect(nats_url, "t")
    asked: list[str] = []

    async def store(msg: Msg) -> None:
        asked.append(wire.decode(wire.StoreRequest, msg.data).args["project_id"])
        await asyncio.sleep(0.1)  # a store busy for a moment
        await msg.respond(wire.encode(wire.StoreReply(ok=True, result={"VAR": "v"})))

    await nc.subscribe(subjects.store_subject("session.env"), cb=store)
    cache = StoreCache(ttl=3600)
    args = {"project_id": "prj_1"}
    got = await asyncio.gather(*(cache.call(nc, "session.env", args, "prj_1") for _ in range(20)))
    assert got == [{"VAR": "v"}] * 20 and asked == ["prj_1"]
    await nc.close()


async def test_an_answer_in_use_is_asked_again_ahead_of_its_expiry() -> None:
    """``ahead``: a caller of an answer in the second half of its time gets it at once, and
    the store is asked again in the background for the callers after it."""
    answers: list[int] = []

    async def fetch(nc: Any, op: str, args: dict[str, Any]) -> int:
        answers.append(len(answers) + 1)
        return answers[-1]

    cache = StoreCache(ttl=10.0, fetch=fetch, ahead=True)
    key = ("session.env", "prj_1")

    async def call() -> Any:
        return await cache.call(None, "session.env", {}, "prj_1")  # type: ignore[arg-type]

    assert await call() == 1
    assert await call() == 1
    assert answers == [1]  # young: kept, not asked again
    when, result, missing = cache._kept[key]
    cache._kept[key] = (when - 6.0, result, missing)  # as if asked 6 s ago
    assert await call() == 1
    await asyncio.gather(*cache._asking.values())  # the background request
    assert answers == [1, 2]
    assert await call() == 2
    assert answers == [1, 2]


async def test_an_answer_asked_for_before_a_change_is_neither_kept_nor_joined() -> None:
    """A change notice heard while an answer is on its way: that answer may have been read
    before the change (a trigger's subscriptions read a page at a time, one made between
    two pages): callers after the notice ask again, and what is kept is their answer."""
    gates: list[asyncio.Event] = []
    answers = iter(["before the change", "after it"])

    async def fetch(nc: Any, op: str, args: dict[str, Any]) -> Any:
        gates.append(gate := asyncio.Event())
        answer = next(answers)
        await gate.wait()
        return answer

    cache = StoreCache(ttl=3600, fetch=fetch)
    first = asyncio.create_task(cache.call(None, "dispatch.targets", {}, "trg_1"))  # type: ignore[arg-type]
    while not gates:
        await asyncio.sleep(0)
    cache.forget()  # the notice
    second = asyncio.create_task(cache.call(None, "dispatch.targets", {}, "trg_1"))  # type: ignore[arg-type]
    while len(gates) < 2:
        await asyncio.sleep(0)
    gates[1].set()
    assert await second == "after it"
    gates[0].set()
    assert await first == "before the change"  # (its caller asked before the change)
    assert await cache.call(None, "dispatch.targets", {}, "trg_1") == "after it"  # type: ignore[arg-type]
    assert len(gates) == 2


async def test_a_cache_forgets_only_on_changes_to_what_it_keeps(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A var set (a limited token may send them in a loop) leaves the webhook lookups, the
    dispatch targets and the tokens kept: it empties the runners' session environments
    only. A notice of an operation this version does not know empties every cache."""
    from akcore.ops import Cache

    heard: list[tuple[Cache | None, str]] = []  # (cache, notice) as each cache hears one
    stale_after = StoreCache.stale_after

    def recorded(self: StoreCache, op_name: str) -> bool:
        stale = stale_after(self, op_name)
        heard.append((self.kind, op_name))
        return stale

    monkeypatch.setattr(StoreCache, "stale_after", recorded)
    nc = await bus.connect(nats_url, "t")
    caches = {kind: StoreCache(ttl=3600, kind=kind) for kind in Cache}
    for cache in caches.values():
        await cache.watch(nc)

    async def notice(op: str) -> set[Cache]:
        """The caches that forgot what they kept on ``op``'s notice."""
        before = {k: c._generation for k, c in caches.items()}
        heard.clear()
        await nc.publish(subjects.CHANGED, op.encode())
        await bus.flush(nc)
        async with asyncio.timeout(10):
            while len(heard) < len(caches):
                await asyncio.sleep(0.01)
        assert {kind for kind, name in heard if name == op} == set(Cache)
        return {k for k, c in caches.items() if c._generation != before[k]}

    assert await notice("var.set") == {Cache.SESSION_ENV}
    assert await notice("auth.revoke_token") == {Cache.TOKENS}
    assert await notice("deployment.activate") == {Cache.WEBHOOKS, Cache.TARGETS}
    assert await notice("connection.delete") == {Cache.SESSION_ENV, Cache.TARGETS}
    assert await notice("trigger.create") == set(Cache)
    assert await notice("some.op_of_a_newer_store") == set(Cache)
    await nc.close()
