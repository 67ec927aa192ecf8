"""Errors raised by the SDK.

AutoKittehError     root of everything the SDK raises
 ├── NotAValue      an object that cannot cross from one session to another (autokitteh._values)
 └── MalformedValue bytes or data that are not an encoded value (autokitteh._values)
"""

from __future__ import annotations


class AutoKittehError(Exception):
    """Something the system refused or could not do for the handler."""


class NotAValue(AutoKittehError, TypeError):
    """An object that is not one of AutoKitteh's value types."""


class MalformedValue(AutoKittehError, ValueError):
    """Data that does not decode into a value (not made by the codec, or over its limits)."""
