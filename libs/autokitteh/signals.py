"""Signals between sessions of a project, and a child session's end."""

from .syscalls import Signal, next_signal, signal

__all__ = ["Signal", "next_signal", "signal"]
