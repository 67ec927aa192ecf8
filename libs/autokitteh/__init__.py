"""The AutoKitteh SDK for Python handlers.

Importable anywhere (standard library only), so handlers can be unit-tested outside the system.
"""

from .activities import activity, inhibit_activities, register_no_activity
from .attr_dict import AttrDict
from .body import Body
from .errors import AutoKittehError
from .event import Event
from .syscalls import (
    Signal,
    add_values,
    check_and_set_value,
    del_value,
    get_store_public_url,
    get_value,
    get_webhook_url,
    http_outcome,
    list_values_keys,
    mutate_value,
    next_event,
    next_signal,
    outcome,
    publish_value,
    set_value,
    signal,
    start,
    store,
    subscribe,
    unpublish_value,
    unsubscribe,
)

__all__ = [
    "AttrDict",
    "AutoKittehError",
    "Body",
    "Event",
    "Signal",
    "activity",
    "add_values",
    "check_and_set_value",
    "del_value",
    "get_store_public_url",
    "get_value",
    "get_webhook_url",
    "http_outcome",
    "inhibit_activities",
    "list_values_keys",
    "mutate_value",
    "next_event",
    "next_signal",
    "outcome",
    "publish_value",
    "register_no_activity",
    "set_value",
    "signal",
    "start",
    "store",
    "subscribe",
    "unpublish_value",
    "unsubscribe",
]
