"""The project's values store: values shared by all sessions of a project, kept by the system.

``autokitteh.store`` is this module, and the module is also the store as a mapping::

    from autokitteh import store
    store["counter"] = 1
    del store["counter"]          # a missing key is fine
    keys = list(store)

Values are AutoKitteh's value types (``autokitteh._values``); dicts come back as AttrDicts.
Outside the system the store is an in-memory dict, so handlers can be unit-tested.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator, MutableMapping
from enum import StrEnum
from typing import Any

from . import _values
from .attr_dict import AttrDict
from .errors import AutoKittehError
from .syscalls import _call, _inside


class Op(StrEnum):
    """The operations of ``mutate_value``."""

    SET = "set"
    GET = "get"
    DEL = "del"
    ADD = "add"
    CHECK_AND_SET = "check_and_set"


_local_values: dict[str, Any] = {}


def mutate_value(key: str, op: Op | str, *args: Any) -> Any:
    """Applies ``op`` (set, get, del, add, check_and_set) to a value, atomically. Stored
    values are values (JSON types, bytes, datetime, timedelta, set, tuple)."""
    if not isinstance(key, str) or not key:
        raise AutoKittehError("values: key must be a non-empty string")
    try:
        op = Op(op)
    except ValueError:
        raise AutoKittehError(f"values: unknown operation {op!r}") from None
    data = [_values.to_data(a, "a stored value") for a in args]
    if not _inside():
        return _local_mutate(key, op, [_values.from_data(d) for d in data])
    reply = _call("value", {"key": key, "op": str(op), "args": data})
    return _values.from_data(reply, "stored value")


def _local_mutate(key: str, op: Op, args: list[Any]) -> Any:
    if op is Op.SET:
        _local_values[key] = args[0]
        return None
    if op is Op.GET:
        return _local_values.get(key)
    if op is Op.DEL:
        _local_values.pop(key, None)
        return None
    if op is Op.ADD:
        _local_values[key] = _local_values.get(key, 0) + args[0]
        return _local_values[key]
    if _local_values.get(key) != args[0]:  # check_and_set
        return False
    _local_values[key] = args[1]
    return True


def set_value(key: str, value: Any) -> None:
    mutate_value(key, Op.SET, value)


def get_value(key: str) -> Any:
    v = mutate_value(key, Op.GET)
    return AttrDict(v) if isinstance(v, dict) else v


def del_value(key: str) -> None:
    mutate_value(key, Op.DEL)


def add_values(key: str, value: int | float) -> int | float:
    return mutate_value(key, Op.ADD, value)  # type: ignore[no-any-return]


def check_and_set_value(key: str, expected_value: Any, new_value: Any) -> bool:
    """Sets ``new_value`` if the value is ``expected_value`` (None: not set); True if it did."""
    return bool(mutate_value(key, Op.CHECK_AND_SET, expected_value, new_value))


def list_values_keys() -> list[str]:
    if not _inside():
        return sorted(_local_values)
    return list(_call("value_keys", {}))


def publish_value(key: str) -> None:
    """Makes the value readable without authentication at ``GET /store/<project>/<key>``."""
    if _inside():
        _call("value_publish", {"key": key, "published": True})


def unpublish_value(key: str) -> None:
    if _inside():
        _call("value_publish", {"key": key, "published": False})


def get_store_public_url() -> str:
    """Where the project's published values are served: ``<url>/<key>`` (the
    ``store_public_url`` a session gets; "" outside the system)."""
    return os.environ.get("store_public_url", "")


class Store(MutableMapping[str, Any]):
    """The values store as a mapping. Deleting a missing key is fine."""

    def __getitem__(self, key: str) -> Any:
        v = get_value(key)
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key: str, value: Any) -> None:
        set_value(key, value)

    def __delitem__(self, key: str) -> None:
        del_value(key)

    def __iter__(self) -> Iterator[str]:
        return iter(list_values_keys())

    def __len__(self) -> int:
        return len(list_values_keys())


class _StoreModule(types.ModuleType, Store):
    """This module, which is also the store (``autokitteh.store["k"]``). Compared, hashed
    and tested for truth as a module, never by reading the store."""

    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        return True


sys.modules[__name__].__class__ = _StoreModule
