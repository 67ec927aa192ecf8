"""Errors raised by the SDK.

AutoKittehError     root of everything the SDK raises
"""

from __future__ import annotations


class AutoKittehError(Exception):
    """Something the system refused or could not do for the handler."""
