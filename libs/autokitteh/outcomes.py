"""Outcomes of events: what a sync webhook answers."""

from .syscalls import http_outcome, outcome

__all__ = ["http_outcome", "outcome"]
