"""The AutoKitteh SDK for Python handlers.

Importable anywhere (standard library only), so handlers can be unit-tested outside the system.
"""

from . import connections, errors, events, outcomes, sessions, signals, store, triggers
from .activities import activity, inhibit_activities, register_no_activity
from .attr_dict import AttrDict
from .body import Body
from .errors import AutoKittehError
from .event import Event
from .store import (
    add_values,
    check_and_set_value,
    del_value,
    get_store_public_url,
    get_value,
    list_values_keys,
    mutate_value,
    publish_value,
    set_value,
    unpublish_value,
)
from .syscalls import (
    Signal,
    get_webhook_url,
    http_outcome,
    next_event,
    next_signal,
    outcome,
    signal,
    start,
    subscribe,
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
    "connections",
    "del_value",
    "errors",
    "events",
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
    "outcomes",
    "publish_value",
    "register_no_activity",
    "sessions",
    "set_value",
    "signal",
    "signals",
    "start",
    "store",
    "subscribe",
    "triggers",
    "unpublish_value",
    "unsubscribe",
]
