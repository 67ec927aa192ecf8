"""The projects' values stores on a JetStream KV bucket, with compare-and-set for atomicity."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from akcore import bus
from akcore.datakey import Keyring
from akcore.errors import InvalidArgument
from akcore.values import encode, kv_key, open_entry, seal, user_key
from autokitteh._values import from_data
from nats.js.errors import (
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)

log = logging.getLogger(__name__)

MAX_KEYS = 64
_TOO_MANY = (
    f"the project already has {MAX_KEYS} values, the limit: delete some before adding new keys"
)
_KEEP, _DELETE = object(), object()
# How long an operation keeps retrying while other sessions change its key first. Retries
# wait a random, growing while (at most _MAX_PAUSE) so that no session loses every race:
# without it, one of a few sessions on the same key could lose a hundred in a row.
CONFLICT_PATIENCE = 20.0
_MAX_PAUSE = 0.05


class Values:
    """One project's values; every operation is atomic (revision-checked writes, retried).
    Values are kept as the SDK encodes them (``autokitteh._values``: plain JSON stays JSON)."""

    purge_refused = False  # said once (see _forget)

    def __init__(self, kv: Any, project_id: str, keyring: Keyring) -> None:
        self.kv, self.project_id, self.keyring = kv, project_id, keyring

    async def _entry(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """The key's value and the revision a write must name: the value's, or its delete
        marker's while one is there, or 0 (no message of the key at all)."""
        k = kv_key(self.project_id, key)
        try:
            e = await self.kv.get(k)
        except (KeyNotFoundError, KeyDeletedError) as gone:
            marker = getattr(gone, "entry", None)
            return None, (marker.revision or 0) if marker is not None else 0
        return open_entry(self.keyring, k, e.value), e.revision

    def _sealed(self, k: str, value: Any, published: bool) -> bytes:
        return seal(self.keyring, k, encode(value, published))

    async def keys(self) -> list[str]:
        """The project's keys: the subjects of its values in the bucket's stream (asked of
        the server, its project's alone), less those whose last word is a delete. (nats-py's
        ``kv.keys()`` watches the whole bucket through a consumer and, under load, could
        answer before it had read anything: no keys while 64 were there, so the limit
        could be passed too.)"""
        js, stream, pre = self.kv._js, self.kv._stream, self.kv._pre
        info = await js.stream_info(stream, subjects_filter=f"{pre}{self.project_id}.>")
        found = [subject.removeprefix(pre) for subject in info.state.subjects or {}]

        async def live(k: str) -> bool:
            try:
                await self.kv.get(k)
            except (KeyNotFoundError, KeyDeletedError) as e:
                marker = getattr(e, "entry", None)  # a delete an older version left: gone now
                if marker is not None and marker.revision:
                    await self._forget(k, marker.revision)
                return False
            return True

        alive = await asyncio.gather(*(live(k) for k in found))
        return sorted(user_key(k) for k, ok in zip(found, alive, strict=True) if ok)

    async def _delete(self, k: str, rev: int) -> None:
        """Deletes ``k`` if its revision is still ``rev``, leaving nothing of it behind: the
        delete marker is removed with what it deleted (a bucket's markers are otherwise kept
        for good, and a project deleting ever new keys would grow the bucket without end)."""
        ack = await self.kv._js.publish(
            f"{self.kv._pre}{k}",
            headers={"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(rev)},
        )
        await self._forget(k, ack.seq)

    async def _written(self, k: str) -> None:
        """After a write: ``k``'s earlier versions removed (``bus.keep_latest``)."""
        await bus.keep_latest(self.kv._js, bus.VALUES_BUCKET, k)

    async def _forget(self, k: str, marker: int) -> None:
        """Removes ``k``'s messages up to its delete marker at stream sequence ``marker``
        (a value set again after it stays). Best effort: the delete is done already."""
        try:
            await self.kv._js.purge_stream(
                self.kv._stream, subject=f"{self.kv._pre}{k}", seq=marker + 1
            )
        except Exception as e:  # (a NATS configuration from before this: a marker stays)
            if not Values.purge_refused:
                Values.purge_refused = True
                log.warning("a deleted value's marker stays in the values bucket: %r", e)

    async def _mutate(self, key: str, change: Callable[[Any], tuple[Any, Any]]) -> Any:
        """Applies ``change(current) -> (new or _KEEP/_DELETE, result)`` atomically."""
        k = kv_key(self.project_id, key)
        deadline = time.monotonic() + CONFLICT_PATIENCE
        for attempt in itertools.count():
            if attempt:
                await _back_off(attempt, deadline)
            entry, rev = await self._entry(key)
            new, result = change(entry["v"] if entry else None)
            if new is _KEEP:
                return result
            try:
                if new is _DELETE or new is None:
                    if entry is not None:
                        await self._delete(k, rev)
                elif entry is None:
                    if len(await self.keys()) >= MAX_KEYS:
                        raise InvalidArgument(_TOO_MANY)
                    # (Named revision: the key's marker, or none: a set racing a delete
                    # is a conflict, tried again.)
                    made = await self.kv.update(k, self._sealed(k, new, False), last=rev)
                    await self._written(k)
                    # Sessions adding keys at once all saw room: the ones past the limit
                    # take theirs back.
                    if len(await self.keys()) > MAX_KEYS:
                        with contextlib.suppress(Exception):  # (set again by another: theirs)
                            await self._delete(k, made)
                        raise InvalidArgument(_TOO_MANY)
                else:
                    published = bool(entry and entry["p"])
                    await self.kv.update(k, self._sealed(k, new, published), last=rev)
                    await self._written(k)
                return result
            except InvalidArgument:
                raise
            except Exception as e:
                if not _is_conflict(e):
                    raise
                # another session changed it first: read again and retry
                if time.monotonic() >= deadline:
                    raise InvalidArgument(
                        f"value {key!r} is changing too often to update it: other sessions"
                        f" kept changing it for {CONFLICT_PATIENCE:.0f} s; try again later"
                    ) from None
        raise AssertionError("unreachable")

    async def apply(self, key: str, op: str, args: list[Any]) -> Any:
        if op == "get":
            entry, _ = await self._entry(key)
            return entry["v"] if entry else None
        if op == "set":
            _need(op, args, 1)
            return await self._mutate(key, lambda cur: (args[0], None))
        if op == "del":
            return await self._mutate(key, lambda cur: (_DELETE, None))
        if op == "add":
            _need(op, args, 1)
            n = args[0]
            if not _is_number(n):
                raise InvalidArgument(f"add: {n!r} is not a number")

            def add(cur: Any) -> tuple[Any, Any]:
                if cur is not None and not _is_number(cur):
                    raise InvalidArgument(f"add: the value of {key!r} is not a number")
                total = (cur or 0) + n
                return total, total

            return await self._mutate(key, add)
        if op == "check_and_set":
            _need(op, args, 2)
            expected, new = from_data(args[0]), args[1]
            return await self._mutate(
                key, lambda cur: (new, True) if from_data(cur) == expected else (_KEEP, False)
            )
        raise InvalidArgument(
            f"unknown values operation {op!r}: use set, get, del, add, check_and_set"
        )

    async def publish(self, key: str, published: bool) -> None:
        k = kv_key(self.project_id, key)
        entry, rev = await self._entry(key)
        if entry is None:
            raise InvalidArgument(f"value {key!r} not found")
        await self.kv.update(k, self._sealed(k, entry["v"], published), last=rev)
        await self._written(k)


async def _back_off(attempt: int, deadline: float) -> None:
    pause = random.uniform(0, min(_MAX_PAUSE, 0.0005 * 2 ** min(attempt, 16)))
    await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))


def _is_conflict(e: Exception) -> bool:
    return isinstance(e, KeyWrongLastSequenceError) or "wrong last sequence" in str(e).lower()


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _need(op: str, args: list[Any], n: int) -> None:
    if len(args) != n:
        raise InvalidArgument(f"{op} takes {n} argument(s), got {len(args)}")
