"""Webhook lookups: the store's answer, kept a few seconds, and the last known answer of
each webhook, for when the store does not answer.

A webhook's event is safe once JetStream acknowledges it, and the dispatcher asks the store
itself (retrying while the store is away) which sessions the event starts. So while the
store is down, ingress accepts a webhook it has looked up before on that last known answer
instead of refusing it: the dispatcher decides later, on the store's current answer. A slug
with no last known answer still gets 503, not 404 (only the store knows).

The last known answers live in memory and in the KV bucket ``AK_WEBHOOKS``, so a restarted
ingress has them even when the store is down as it starts. An answer is written there only
when it is new or changed, and deleted when the store says the slug is not found.
"""

from __future__ import annotations

import logging
from typing import Any

from akcore import bus, subjects, wire
from akcore.cache import StoreCache
from akcore.errors import AKError, InvalidArgument, NotFound
from akcore.ops import Cache
from akcore.webhook import WebhookTarget
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)

OP = "webhook.lookup"
# How long a request for a webhook with a last known answer waits for the store before it
# is accepted on that answer. Once the store has not answered, such requests do not wait
# at all until it answers again (each one still asks, so its return is noticed).
PATIENCE = 2.0


class KnownWebhooks:
    """The last known target of each webhook slug: in memory, and in the bucket when given
    one (``await KnownWebhooks.load(js)``). Only slugs the store found are kept, so their
    number is bounded by the triggers, not by what clients send."""

    def __init__(self, kv: KeyValue | None = None) -> None:
        self._kv = kv
        self._targets: dict[str, WebhookTarget] = {}

    @classmethod
    async def load(cls, js: JetStreamContext) -> KnownWebhooks:
        """Opens the bucket (the store creates it: ``bus.ensure_streams``) and reads what
        it holds."""
        kv = await js.key_value(subjects.BUCKET_WEBHOOKS)
        known = cls(kv)
        watcher = await kv.watchall()  # (nats-py leaves its watcher's methods untyped)
        try:
            while (entry := await watcher.updates(timeout=10)) is not None:  # type: ignore[no-untyped-call]
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    continue
                try:
                    known._targets[entry.key] = wire.decode(WebhookTarget, entry.value)
                except (ValueError, TypeError) as e:
                    log.warning("webhook %s: last known lookup unreadable: %s", entry.key, e)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return known

    def __len__(self) -> int:
        return len(self._targets)

    def get(self, slug: str) -> WebhookTarget | None:
        return self._targets.get(slug)

    async def remember(self, slug: str, target: WebhookTarget) -> None:
        """Keeps the store's answer; writes the bucket only when it is new or changed."""
        if self._targets.get(slug) == target:
            return
        self._targets[slug] = target  # before the write: the callers after this one skip it
        if self._kv is not None:
            try:
                await self._kv.put(slug, wire.encode(target))
                await bus.keep_latest(self._kv._js, subjects.BUCKET_WEBHOOKS, slug)
            except Exception as e:  # memory still has it; only a restart would miss it
                log.warning("webhook %s: last known lookup not saved: %s", slug, e)

    async def forget(self, slug: str) -> None:
        """The store said the slug is not found (anymore)."""
        if self._targets.pop(slug, None) is None:
            return
        if self._kv is not None:
            try:
                await self._kv.delete(slug)
                await bus.keep_latest(self._kv._js, subjects.BUCKET_WEBHOOKS, slug)  # the marker
            except Exception as e:
                log.warning("webhook %s: last known lookup not deleted: %s", slug, e)


class WebhookLookups:
    """``await lookups.target(slug)``: the store's ``webhook.lookup``, kept for ``ttl``
    seconds (``StoreCache``: forgotten on the store's change notices), or the last known
    answer when the store does not answer.

    Raises ``NotFound`` when the store knows no such webhook (or its project has no active
    deployment), and ``Unavailable`` (an ``AKError``) when the store did not answer and the
    slug has no last known answer.
    """

    def __init__(self, nc: Client, known: KnownWebhooks | None = None, ttl: float = 5.0) -> None:
        self._nc = nc
        self._known = known if known is not None else KnownWebhooks()
        self._cache = StoreCache(ttl, fetch=self._fetch, kind=Cache.WEBHOOKS)
        self._away = False  # the store did not answer the last request

    async def watch(self) -> None:
        """Forgets kept answers when the store announces a change."""
        await self._cache.watch(self._nc)

    async def target(self, slug: str) -> WebhookTarget:
        args = {"slug": slug}
        known = self._known.get(slug)
        if known is None:  # nothing to fall back on: the store's answer, however long
            result: WebhookTarget = await self._cache.call(self._nc, OP, args, slug)
            return result
        try:
            patience = 0.0 if self._away else PATIENCE
            result = await self._cache.call(self._nc, OP, args, slug, timeout=patience)
            return result
        except NotFound:
            raise
        except (AKError, TimeoutError) as e:
            self._went_away(e)
            return known

    async def _fetch(self, nc: Client, op: str, args: dict[str, Any]) -> WebhookTarget:
        """Asks the store; every answer it gives updates the last known one."""
        slug = args["slug"]
        try:
            answer = await bus.store_call(nc, op, args)
        except InvalidArgument:  # no slug at all (a NUL in it): no webhook, the store is up
            self._came_back()
            raise NotFound(f"no webhook {slug!r}") from None
        except NotFound:
            self._came_back()
            await self._known.forget(slug)
            raise
        except AKError as e:
            self._went_away(e)
            raise
        self._came_back()
        target = WebhookTarget.from_lookup(answer)
        await self._known.remember(slug, target)
        return target

    def _went_away(self, e: BaseException) -> None:
        if not self._away:
            self._away = True
            log.warning(
                "store not answering webhook lookups (%s): webhooks looked up before "
                "(%d) are accepted on their last known lookup until it answers again",
                str(e) or f"no answer within {PATIENCE:g}s",
                len(self._known),
            )

    def _came_back(self) -> None:
        if self._away:
            self._away = False
            log.info("store answers webhook lookups again")
