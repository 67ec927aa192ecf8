"""An event's data as it rests: sealed whole with the data key (``akcore.datakey``), bound to
its project and event id, wherever it waits (``AK_EVENTS``, ``AK_DEFERRED``, jobs, inbox
deliveries, the store's events table). A webhook's body, query string and headers, and an
integration's payload, can carry anything a sender put there (``?token=``, a password in a
form). Opened only where the data is used: the dispatcher (filters), the runner (the
handler's ``event.data``) and the store (``ak event get``, by its owner).

Its memo is sealed apart the same way (``sealed_memo``, bound to the event as its memo, not
its data): what ``ak event dispatch --memo`` was given, a webhook sender's address. Opened by
the dispatcher (a provider's redelivery) and the store (``ak event get``).

Events published by earlier versions carry their data in the clear (``sealed_data`` empty;
their credential headers sealed one by one, ``akcore.credheaders``): read as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import wire
from .datakey import Keyring, SealError


def _aad(project_id: str, event_id: str, part: str = "data") -> bytes:
    return f"{project_id}/event/{event_id}/{part}".encode()


def seal(data: dict[str, Any], project_id: str, event_id: str, keys: Keyring) -> bytes:
    return keys.seal(wire.pack(data), _aad(project_id, event_id))


def open_data(blob: bytes, project_id: str, event_id: str, keys: Keyring) -> dict[str, Any]:
    """The data sealed in ``blob``; raises SealError (another event's, altered, another
    key's, or not sealed data at all)."""
    return _open_map(blob, project_id, event_id, "data", keys)


def seal_memo(memo: dict[str, str], project_id: str, event_id: str, keys: Keyring) -> bytes:
    return keys.seal(wire.pack(memo), _aad(project_id, event_id, "memo"))


def open_memo(blob: bytes, project_id: str, event_id: str, keys: Keyring) -> dict[str, str]:
    """The memo sealed in ``blob``; raises SealError (another event's, altered, another
    key's, or not a memo)."""
    return wire.memo_text(_open_map(blob, project_id, event_id, "memo", keys))


def _open_map(
    blob: bytes, project_id: str, event_id: str, part: str, keys: Keyring
) -> dict[str, Any]:
    try:
        opened = wire.unpack(keys.open(blob, _aad(project_id, event_id, part)))
    except ValueError:  # (msgpack's errors are ValueErrors) sealed by no version of ours
        raise SealError(f"an event's sealed {part} is not an encoded map") from None
    if not isinstance(opened, dict):
        raise SealError(f"an event's sealed {part} is not a map")
    return opened


def sealed(event: wire.Event, keys: Keyring) -> wire.Event:
    """The event with its data and memo sealed (each as it is when already sealed, or
    empty: a schedule's tick has no data)."""
    if event.data and not event.sealed_data:
        blob = seal(event.data, event.project_id, event.event_id, keys)
        event = dataclasses.replace(event, data={}, sealed_data=blob)
    if event.memo and not event.sealed_memo:
        blob = seal_memo(event.memo, event.project_id, event.event_id, keys)
        event = dataclasses.replace(event, memo={}, sealed_memo=blob)
    return event


def memo_of(event: wire.Event, keys: Keyring) -> dict[str, str]:
    """The event's memo, opened when sealed; raises SealError."""
    if not event.sealed_memo:
        return event.memo
    return open_memo(event.sealed_memo, event.project_id, event.event_id, keys)


def data_of(event: wire.Event, keys: Keyring) -> dict[str, Any]:
    """The event's data, opened when sealed; raises SealError."""
    if not event.sealed_data:
        return event.data
    return open_data(event.sealed_data, event.project_id, event.event_id, keys)


def opened(event: wire.Event, keys: Keyring) -> wire.Event:
    """The event with its data and memo in the clear (for a process of the same service);
    raises SealError."""
    if event.sealed_data:
        event = dataclasses.replace(event, data=data_of(event, keys), sealed_data=b"")
    if event.sealed_memo:
        event = dataclasses.replace(event, memo=memo_of(event, keys), sealed_memo=b"")
    return event
