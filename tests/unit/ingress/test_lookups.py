"""Webhook lookups: last known answers kept in the bucket, used only when the store is away."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ak_ingress import lookups as lookups_mod
from ak_ingress.lookups import KnownWebhooks, WebhookLookups
from akcore import bus, subjects, wire
from akcore.errors import NotFound, Unavailable
from akcore.webhook import WebhookTarget
from nats.aio.client import Client
from nats.aio.msg import Msg

SLUG = "n66f3e78p4ext7hdz16578p5tw"
ANSWER = {"trigger_id": "trg_1", "project_id": "prj_1", "name": "hook", "is_sync": False}


class FakeStore:
    """Answers ``webhook.lookup`` from ``self.hooks``. Frozen, it holds the requests until
    it thaws (as a store under SIGSTOP); stopped, nobody answers (as a dead one)."""

    def __init__(self, nc: Client) -> None:
        self.nc, self.hooks = nc, dict[str, Any]()
        self.held: list[Msg] | None = None
        self.sub: Any = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(subjects.store_subject(lookups_mod.OP), cb=self._on_msg)

    async def stop(self) -> None:
        await self.sub.unsubscribe()
        await self.nc.flush()

    def freeze(self) -> None:
        self.held = []

    async def thaw(self) -> None:
        held, self.held = self.held or [], None
        for msg in held:
            await self._on_msg(msg)

    async def _on_msg(self, msg: Msg) -> None:
        if self.held is not None:
            self.held.append(msg)
            return
        slug = wire.decode(wire.StoreRequest, msg.data).args["slug"]
        if slug in self.hooks:
            reply = wire.StoreReply(ok=True, result=self.hooks[slug])
        else:
            reply = wire.StoreReply(ok=False, error_kind="not_found", error="no webhook")
        await msg.respond(wire.encode(reply))


async def _revisions(nc: Client) -> int:
    """How many writes the bucket has taken (puts and deletes)."""
    info = await nc.jetstream().stream_info(f"KV_{subjects.BUCKET_WEBHOOKS}")
    return int(info.state.last_seq)


async def test_last_known_answers_outlive_the_store_and_a_restart(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    await bus.ensure_streams(js)  # the store's part: the bucket
    store = FakeStore(nc)
    await store.start()
    store.hooks[SLUG] = ANSWER
    lookups = WebhookLookups(nc, await KnownWebhooks.load(js), ttl=0)
    expected = WebhookTarget("trg_1", "prj_1", "hook", False)
    for _ in range(3):
        assert await lookups.target(SLUG) == expected
    assert await _revisions(nc) == 1  # written once: the same answer again writes nothing
    store.hooks[SLUG] = {**ANSWER, "is_sync": True}
    assert (await lookups.target(SLUG)).is_sync
    assert await _revisions(nc) == 2  # a changed answer is written

    await store.stop()  # nobody answers now
    assert (await lookups.target(SLUG)).is_sync  # the last known answer
    with pytest.raises(Unavailable):  # never looked up: only the store could tell
        await lookups.target("aaaaaaaaaaaaaaaaaaaaaaaaaa")
    restarted = WebhookLookups(nc, await KnownWebhooks.load(js), ttl=0)
    assert (await restarted.target(SLUG)).is_sync  # from the bucket

    await store.start()
    del store.hooks[SLUG]
    # While away, a request does not wait for the store: its answer counts for a later one.
    await _until_not_found(restarted)
    assert await _revisions(nc) == 3  # the delete
    assert len(await KnownWebhooks.load(js)) == 0
    await store.stop()
    with pytest.raises(Unavailable):  # forgotten: no longer accepted while the store is away
        await restarted.target(SLUG)
    await nc.close()


async def test_a_frozen_store_is_waited_for_once(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that does not answer (frozen): the first request of a known webhook waits
    PATIENCE, the next ones not at all; when the store answers again, its answers count."""
    monkeypatch.setattr(lookups_mod, "PATIENCE", 0.3)
    nc = await bus.connect(nats_url, "t")
    await bus.ensure_streams(nc.jetstream())  # the store's part: the bucket
    store = FakeStore(nc)
    await store.start()
    store.hooks[SLUG] = ANSWER
    lookups = WebhookLookups(nc, await KnownWebhooks.load(nc.jetstream()), ttl=0)
    await lookups.target(SLUG)
    store.freeze()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await lookups.target(SLUG)).trigger_id == "trg_1"
    assert loop.time() - t0 >= 0.3
    t0 = loop.time()
    for _ in range(5):
        assert (await lookups.target(SLUG)).trigger_id == "trg_1"
    assert loop.time() - t0 < 0.25  # no waiting while the store is away
    del store.hooks[SLUG]
    await store.thaw()
    await _until_not_found(lookups)  # the held request's answer, or a later one's
    await nc.close()


async def _until_not_found(lookups: WebhookLookups) -> None:
    for _ in range(100):
        try:
            await lookups.target(SLUG)
        except NotFound:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the store's answer never counted")


def test_target_round_trips() -> None:
    t = WebhookTarget.from_lookup(ANSWER)
    assert wire.decode(WebhookTarget, wire.encode(t)) == t
