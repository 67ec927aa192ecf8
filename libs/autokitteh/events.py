"""Waiting for events of the project's triggers (and connections) inside a session."""

from .syscalls import next_event, subscribe, unsubscribe

__all__ = ["next_event", "subscribe", "unsubscribe"]
