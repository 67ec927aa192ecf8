"""The project's triggers as a session sees them."""

from .syscalls import get_webhook_url

__all__ = ["get_webhook_url"]
