"""Store answers kept for a few seconds by the services that ask the same thing on every
event or session (a webhook's trigger, a project's vars).

The store publishes the name of every operation that changes projects, deployments,
triggers or vars on ``ak.changed`` (core NATS) before it answers it; a ``StoreCache``
forgets everything when it hears one that changes what it keeps (``ops.Op.invalidates``:
a var set does not empty the webhook lookups), so a change is seen by the next event. The
time limit covers a notice lost in a reconnect. With ``ahead``, an answer still in use is asked
for again before it expires, off the caller's path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from . import bus, ops, subjects
from .errors import NotFound

Fetch = Callable[[Client, str, dict[str, Any]], Awaitable[Any]]


class StoreCache:
    """``await cache.call(nc, op, args, key)``: ``bus.store_call`` with memory. A "not found"
    answer is kept too (it is an answer: unknown webhooks are cheap to refuse). Callers
    asking for the same key while it is being fetched wait for that one answer: when an
    answer expires under load, the store is asked once, not once per waiting event.

    ``fetch`` asks the store (``bus.store_call`` by default): a service may wrap it to see
    each answer as it arrives (ingress remembers webhook lookups beyond the time limit)."""

    # Keys can come from outside (a webhook's slug): past this many answers, the expired
    # ones are dropped, and if that is not enough, all of them.
    MAX_KEPT = 10_000

    def __init__(
        self,
        ttl: float = 5.0,
        fetch: Fetch | None = None,
        ahead: bool = False,
        kind: ops.Cache | None = None,
    ) -> None:
        """``ahead``: an answer used in the second half of its time is asked again in the
        background, so that a key in steady use is never asked for while a caller waits.
        ``kind``: what it keeps, of ``ops.Cache``; a change notice of an operation that
        does not invalidate it is let pass (None: every notice empties it)."""
        self.ttl, self.ahead, self.kind = ttl, ahead, kind
        self._fetch: Fetch = fetch or bus.store_call
        self._kept: dict[tuple[str, str], tuple[float, Any, str | None]] = {}
        self._asking: dict[tuple[str, str], asyncio.Future[Any]] = {}
        # Change notices heard: an answer asked for before one is neither kept nor joined
        # by callers after it (it may have been read before the change was made).
        self._generation = 0

    async def watch(self, nc: Client) -> None:
        async def on_change(msg: Msg) -> None:
            if self.stale_after(msg.data.decode(errors="replace")):
                self.forget()

        await nc.subscribe(subjects.CHANGED, cb=on_change)

    def stale_after(self, op_name: str) -> bool:
        """Whether operation ``op_name`` may have changed what this cache keeps (one it
        does not know of, a newer store's, may have)."""
        op = ops.OPS.get(op_name)
        return self.kind is None or op is None or self.kind in op.invalidates

    def forget(self) -> None:
        """Forgets every answer, kept or on its way (a change was made)."""
        self._kept.clear()
        self._asking.clear()  # (their callers still get them; later callers ask anew)
        self._generation += 1

    def _keep(self, key: tuple[str, str], now: float, result: Any, missing: str | None) -> None:
        if self.ttl <= 0:
            return
        if len(self._kept) >= self.MAX_KEPT:
            self._kept = {k: v for k, v in self._kept.items() if now - v[0] < self.ttl}
            if len(self._kept) >= self.MAX_KEPT:
                self._kept.clear()
        self._kept[key] = (now, result, missing)

    def has(self, op: str, key: str) -> bool:
        """Whether a good (not "not found") answer for ``key`` is kept and fresh."""
        hit = self._kept.get((op, key))
        now = asyncio.get_running_loop().time()
        return hit is not None and hit[2] is None and now - hit[0] < self.ttl

    async def call(
        self, nc: Client, op: str, args: dict[str, Any], key: str, timeout: float | None = None
    ) -> Any:
        """The answer; ``timeout``: how long this caller waits for the store (``TimeoutError``
        after it; the request goes on, and its answer is kept for the next caller)."""
        now = asyncio.get_running_loop().time()
        hit = self._kept.get((op, key))
        if hit is not None and now - hit[0] < self.ttl:
            if self.ahead and now - hit[0] >= self.ttl / 2:
                self._asked(nc, op, args, key, now)  # for the next callers
            if hit[2] is not None:
                raise NotFound(hit[2])
            return hit[1]
        asking = self._asked(nc, op, args, key, now)
        if timeout is None:
            return await asyncio.shield(asking)
        return await asyncio.wait_for(asyncio.shield(asking), timeout)

    def _asked(
        self, nc: Client, op: str, args: dict[str, Any], key: str, now: float
    ) -> asyncio.Future[Any]:
        """The store's answer on its way: asked now unless it is already being asked."""
        asking = self._asking.get((op, key))
        if asking is None:  # a task of its own: a caller given up on does not cancel it
            asking = asyncio.ensure_future(self._ask(nc, op, args, key, now, self._generation))
            asking.add_done_callback(_retrieved)
            self._asking[(op, key)] = asking
        return asking

    async def _ask(
        self, nc: Client, op: str, args: dict[str, Any], key: str, now: float, generation: int
    ) -> Any:
        try:
            result = await self._fetch(nc, op, args)
        except NotFound as e:
            if generation == self._generation:
                self._keep((op, key), now, None, e.message)
            raise
        else:
            if generation == self._generation:
                self._keep((op, key), now, result, None)
            return result
        finally:
            if self._asking.get((op, key)) is asyncio.current_task():
                del self._asking[(op, key)]


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Marks an answer's error as seen (its callers have it; none may be left to)."""
    if not fut.cancelled():
        fut.exception()
