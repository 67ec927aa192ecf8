"""Child sessions."""

from .syscalls import start

__all__ = ["start"]
