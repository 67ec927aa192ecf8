"""Whether a service holds the store's secrets key, checked as it starts.

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

from nats.aio.client import Client

from . import bus
from .datakey import Keyring, SealError
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


def sealed(keys: Keyring) -> bytes:
    """A value sealed with the primary key, for the other side to open."""
    return keys.seal(_CANARY, _AAD)


def opens(keys: Keyring, blob: object) -> bool:
    """Whether ``blob`` is the check's value sealed with a key of ``keys``."""
    try:
        return isinstance(blob, bytes) and keys.open(blob, _AAD) == _CANARY
    except SealError:
        return False


class KeyMismatch(AKError):
    """This service's secrets key is not the store's (one of the two ways)."""


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
    while not stop.is_set():
        try:
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
        try:
            await asyncio.wait_for(stop.wait(), RETRY)
        except TimeoutError:
            pass


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
