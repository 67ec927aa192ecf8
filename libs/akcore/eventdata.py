"""An event's data as it rests: sealed whole with the data key (``akcore.datakey``), bound to
its project and event id, wherever it waits (``AK_EVENTS``, ``AK_DEFERRED``, jobs, inbox
deliveries, the store's events table). A webhook's body, query string and headers, and an
integration's payload, can carry anything a sender put there (``?token=``, a password in a
form). Opened only where the data is used: the dispatcher (filters), the runner (the
handler's ``event.data``) and the store (``ak event get``, by its owner).

Events published by earlier versions carry their data in the clear (``sealed_data`` empty;
their credential headers sealed one by one, ``akcore.credheaders``): read as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import wire
from .datakey import Keyring, SealError


def _aad(project_id: str, event_id: str) -> bytes:
    return f"{project_id}/event/{event_id}/data".encode()


def seal(data: dict[str, Any], project_id: str, event_id: str, keys: Keyring) -> bytes:
    return keys.seal(wire.pack(data), _aad(project_id, event_id))


def open_data(blob: bytes, project_id: str, event_id: str, keys: Keyring) -> dict[str, Any]:
    """The data sealed in ``blob``; raises SealError (another event's, altered, another
    key's, or not sealed data at all)."""
    try:
        data = wire.unpack(keys.open(blob, _aad(project_id, event_id)))
    except ValueError:  # (msgpack's errors are ValueErrors) sealed by no version of ours
        raise SealError("an event's sealed data is not an encoded map") from None
    if not isinstance(data, dict):
        raise SealError("an event's sealed data is not a map")
    return data


def sealed(event: wire.Event, keys: Keyring) -> wire.Event:
    """The event with its data sealed (as it is when already sealed, or has none: a
    schedule's tick)."""
    if event.sealed_data or not event.data:
        return event
    blob = seal(event.data, event.project_id, event.event_id, keys)
    return dataclasses.replace(event, data={}, sealed_data=blob)


def data_of(event: wire.Event, keys: Keyring) -> dict[str, Any]:
    """The event's data, opened when sealed; raises SealError."""
    if not event.sealed_data:
        return event.data
    return open_data(event.sealed_data, event.project_id, event.event_id, keys)


def opened(event: wire.Event, keys: Keyring) -> wire.Event:
    """The event with its data in the clear (for a process of the same service); raises
    SealError."""
    if not event.sealed_data:
        return event
    return dataclasses.replace(event, data=data_of(event, keys), sealed_data=b"")
