"""Whether a service holds the store's secrets key, checked as it starts.

The canary: a fixed value the store seals with its primary key the first time it starts and
keeps in the JetStream KV bucket ``AK_KEYS`` (and in its database: ``ak_store.keycanary``).
A store that starts again opens it before it serves: a store whose keys do not include
the one that sealed it (the key replaced instead of rotated, or a second store given
another key) stops, unless told that key is lost for good (``AK_SECRETS__LOST_KEY=<its
id>``), and it seals the canary again with its primary
when an older key sealed it (rotation). Every other service opens it too, as soon as NATS
answers, store or no store: one given another key stops at once.

A service started without ``AK_SECRETS__KEY`` makes a key of its own (``akcore.secrets``),
and one given another key seals what no other service opens: sessions end in ERROR, filters
count as no match, stored values do not open. Each dispatcher, runner and ingress therefore
asks the store (``keys.check``), once it answers: the store opens a value the service
sealed with its primary key, and the service opens one the store sealed with its own. Either
failing stops the service with one message saying what to do. Nothing is kept: the values
are sealed for the check and dropped.

With rotation (``AK_SECRETS__KEYS=new,old``), restart the stores first: a service holding
both keys passes against a store holding the old one only when the old one is its primary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import (
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.errors import NotFoundError as StreamNotFound

from . import bus, natsauth, waitfor
from .datakey import Keyring, SealError, sealed_by
from .errors import AKError, NotFound

log = logging.getLogger(__name__)

_CANARY = b"autokitteh secrets key check"
_AAD = b"keys.check"
RETRY = 0.25  # seconds between asks while the store does not answer (it may be starting)
PATIENT = 10.0  # seconds of waiting before it is said

NOT_THE_STORES = (
    "this service's secrets key is not the store's: {which}. Give every store, runner, "
    "dispatcher and ingress the same key (AK_SECRETS__KEY, or AK_SECRETS__KEYS with the "
    "primary first; restart the stores first when rotating): docs/deploy.md"
)


CANARY = "canary"  # its key in the bucket
_CANARY_AAD = b"keys.canary"
MALFORMED = "malformed"  # the id named for a canary that is not sealed bytes, or altered

CANARY_ALTERED = (
    "the secrets key's canary in {where} is not a value any store sealed (it "
    "was altered, or written by hand): check who may write to it. To seal it anew with this "
    "store's key, start the store once with AK_SECRETS__LOST_KEY=malformed"
)
STORE_LACKS = (
    "the secrets key that sealed this system's data (key id {by}) is not among this store's "
    "keys: it was replaced instead of rotated, or this store was given another store's key "
    "or a key list from before a rotation. Give the store that key too (AK_SECRETS__KEYS="
    "<new>,<old>, or the lines of secrets.key in the data home: docs/deploy.md). If it is "
    "lost for good, nothing it sealed (secret vars, sessions' journals, events) can be read "
    "again by anyone; to go on without it, stop every store and start one with "
    "AK_SECRETS__LOST_KEY={ids}"
)
LOST_WHILE_RUNNING = (
    "AK_SECRETS__LOST_KEY names the key that sealed the canary, but another store is "
    "running, which may hold that key (then this store is the one given the wrong key): "
    "stop every store first, then start one with AK_SECRETS__LOST_KEY"
)
CANT_OPEN_CANARY = (
    "this service's secrets keys cannot open the key canary the stores sealed (with key id "
    "{by}): give every store, runner, dispatcher and ingress the same keys (AK_SECRETS__KEY, "
    "or AK_SECRETS__KEYS with the primary first, or the lines of secrets.key in the data "
    "home): docs/deploy.md"
)


def sealed(keys: Keyring) -> bytes:
    """A value sealed with the primary key, for the other side to open."""
    return keys.seal(_CANARY, _AAD)


def opens(keys: Keyring, blob: object, aad: bytes = _AAD) -> bool:
    """Whether ``blob`` is the check's value (or with ``_CANARY_AAD``, the canary) sealed
    with a key of ``keys``."""
    try:
        return isinstance(blob, bytes) and keys.open(blob, aad) == _CANARY
    except SealError:
        return False


class KeyMismatch(AKError):
    """This service's secrets key is not the store's (one of the two ways)."""


async def _canary(js: JetStreamContext) -> tuple[bytes | None, int]:
    """The canary (None while there is none: no store of this version has started yet, or
    it was deleted) and the revision a write must name (0: no message of it at all)."""
    try:
        kv = await js.key_value(natsauth.BUCKET_KEYS)
    except (BucketNotFoundError, StreamNotFound):
        return None, 0
    try:
        entry = await kv.get(CANARY)
    except (KeyNotFoundError, KeyDeletedError) as gone:  # (deleted by hand: its marker's)
        marker = getattr(gone, "entry", None)
        return None, (marker.revision or 0) if marker is not None else 0
    return entry.value or b"", entry.revision or 0


def lost_ids(text: str) -> frozenset[str]:
    """The key ids ``AK_SECRETS__LOST_KEY`` names (one, or several separated by commas or
    spaces; either case)."""
    return frozenset(x for x in text.lower().replace(",", " ").split() if x)


def _named(keys: Keyring, blob: bytes) -> str:
    """The id of the key that sealed a canary these keys do not open (``MALFORMED`` for one
    no key sealed)."""
    by = sealed_by(blob)
    return by.hex() if by is not None and not keys.holds(by) else MALFORMED


def judge(keys: Keyring, blob: bytes | None, lost: frozenset[str], altered: str) -> bool:
    """The store's verdict on a canary (``blob``; None when there is none): whether it must
    be sealed (again) with this store's primary key: when there is none, when another of
    its keys sealed it (rotation), or when ``lost`` names the id of the key that sealed it
    (a key lost for good: ``admit`` has made sure no other store runs). Raises KeyMismatch
    when it does not open otherwise (``altered``: what to say of one no key sealed)."""
    if blob is None:
        return True
    if opens(keys, blob, _CANARY_AAD):
        return sealed_by(blob) != keys.primary_id
    named = _named(keys, blob)
    if named not in lost:
        if named == MALFORMED:
            raise KeyMismatch(altered)
        # (the ids already named lost too: the two canaries may name different keys)
        raise KeyMismatch(STORE_LACKS.format(by=named, ids=",".join(sorted(lost | {named}))))
    return True


async def admit(
    nc: Client, keys: Keyring, canaries: list[tuple[bytes | None, str]], lost: frozenset[str]
) -> None:
    """The store's check of its canaries (each with what to say when it was altered),
    before it writes anything: KeyMismatch when one does not open (``judge``). When one
    opens only by a key named lost, no other store may be running (one that does may hold
    that key: this store would be the one given the wrong key), asked once for all."""
    for blob, altered in canaries:
        judge(keys, blob, lost, altered)
    used = sorted(
        {_named(keys, b) for b, _ in canaries if b is not None and not opens(keys, b, _CANARY_AAD)}
    )
    if not used:
        return
    if await bus.ping_service(nc, "store", timeout=0.5):  # (not this one yet)
        raise KeyMismatch(LOST_WHILE_RUNNING)
    log.warning(
        "the secrets key %s is lost (AK_SECRETS__LOST_KEY): what it sealed stays unreadable; "
        "the canary is sealed with this store's primary key",
        ", ".join(used),
    )


def seal_canary(keys: Keyring) -> bytes:
    """A canary sealed with the primary key."""
    return keys.seal(_CANARY, _CANARY_AAD)


WHERE_KV = f"the KV bucket {natsauth.BUCKET_KEYS}"
ALTERED_KV = CANARY_ALTERED.format(where=WHERE_KV)


async def read(js: JetStreamContext) -> bytes | None:
    """The canary in JetStream (None: none)."""
    return (await _canary(js))[0]


async def seal_when_due(
    keys: Keyring,
    lost: frozenset[str],
    altered: str,
    where: str,
    read: Callable[[], Awaitable[tuple[bytes | None, Any]]],
    swap: Callable[[Any, bytes], Awaitable[bool]],
) -> None:
    """Seals a canary (kept in ``where``) with the primary key when ``judge`` says it must,
    once ``admit`` passed: ``read`` gives it and what a write must find unchanged, ``swap``
    writes the fresh one unless it changed meanwhile (False: another store wrote it first,
    and that one is judged). Raises KeyMismatch when it does not open."""
    for _ in range(100):  # (stores starting together: a few rounds at most)
        blob, seen = await read()
        if not judge(keys, blob, lost, altered):
            return
        if await swap(seen, seal_canary(keys)):
            return
    raise AKError(
        f"the secrets key's canary in {where} kept changing while this store started: is "
        "something else writing it?"
    )


async def settle(nc: Client, keys: Keyring, lost: frozenset[str]) -> None:
    """The store's part for the canary in JetStream (``seal_when_due``)."""
    js = nc.jetstream()
    kv = await js.key_value(natsauth.BUCKET_KEYS)

    async def swap(revision: int, fresh: bytes) -> bool:
        try:  # (two stores starting at once: one seals it, the other opens that)
            await kv.update(CANARY, fresh, last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    await seal_when_due(keys, lost, ALTERED_KV, WHERE_KV, lambda: _canary(js), swap)


async def canary(js: JetStreamContext, keys: Keyring) -> bool:
    """A service's part: whether the canary is there and opens (False: not there yet);
    raises KeyMismatch when it does not open."""
    blob, _ = await _canary(js)
    if blob is None:
        return False
    if not opens(keys, blob, _CANARY_AAD):
        by = sealed_by(blob)
        raise KeyMismatch(CANT_OPEN_CANARY.format(by=by.hex() if by is not None else MALFORMED))
    return True


async def check(nc: Client, keys: Keyring) -> None:
    """Asks the store once; raises KeyMismatch when either side's primary key is unknown
    to the other, Unavailable (or another error) when the store gave no verdict."""
    try:
        answer = await bus.store_call(nc, "keys.check", {"sealed": sealed(keys)})
    except NotFound:  # a store of an earlier version, in a rolling upgrade
        log.warning("the store does not know keys.check (an earlier version): key not checked")
        return
    if not answer.get("opened"):
        raise KeyMismatch(NOT_THE_STORES.format(which="the store cannot open what it seals"))
    if not opens(keys, answer.get("sealed")):
        raise KeyMismatch(NOT_THE_STORES.format(which="it cannot open what the store seals"))


async def wait(nc: Client, keys: Keyring, stop: asyncio.Event) -> None:
    """Checks once the store gives a verdict (asking again, however long, while it does
    not: away, busy, NATS reconnecting); returns then, or when ``stop`` is set first;
    raises KeyMismatch."""
    loop = asyncio.get_running_loop()
    say_at = loop.time() + PATIENT
    opened = False
    while not stop.is_set():
        try:
            # The canary first: it needs only NATS, and tells a key that is not the store's
            # while the store is away. (Not allowed to read it, as with a NATS configuration
            # printed before this version: the store's verdict alone.)
            if not opened:
                try:
                    opened = await canary(nc.jetstream(), keys)
                except KeyMismatch:
                    raise
                except Exception:
                    pass
            await check(nc, keys)
            return
        except KeyMismatch:
            raise
        except Exception as e:  # no verdict: asked again
            if loop.time() >= say_at:
                log.warning(
                    "still waiting for the store to check this service's secrets key (%s): "
                    "is the store up, and may this service's NATS user ask it keys.check? "
                    "(print `ak nats-config` again after an upgrade)",
                    e or type(e).__name__,
                )
                say_at = loop.time() + 60
        await waitfor.pause(stop, RETRY)


async def first(nc: Client, keys: Keyring, stop: asyncio.Event) -> None:
    """``wait``, for a service that checks before it does anything else: on a mismatch its
    connection is closed before KeyMismatch is raised (nothing else to undo)."""
    try:
        await wait(nc, keys, stop)
    except KeyMismatch:
        await bus.close(nc)
        raise


async def watch(nc: Client, keys: Keyring, stop: asyncio.Event, failed: list[AKError]) -> None:
    """``wait`` in the background (for a service that serves while the store is away); on
    a mismatch the error is added to ``failed`` and ``stop`` set: the service stops (and
    raises it)."""
    try:
        await wait(nc, keys, stop)
    except KeyMismatch as e:
        failed.append(e)
        stop.set()
