"""The AutoKitteh SDK for Python handlers.

Importable anywhere (standard library only), so handlers can be unit-tested outside the system.
"""

from .activities import activity, inhibit_activities, register_no_activity
from .attr_dict import AttrDict
from .body import Body
from .errors import AutoKittehError
from .event import Event

__all__ = [
    "AttrDict",
    "AutoKittehError",
    "Body",
    "Event",
    "activity",
    "inhibit_activities",
    "register_no_activity",
]
