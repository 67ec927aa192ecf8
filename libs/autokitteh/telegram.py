"""Telegram clients for a ``telegram`` connection (``python-telegram-bot ~= 22.0``)."""

from __future__ import annotations

from telegram import Bot

from ._helpers import required


def telegram_client(connection: str) -> Bot:
    """A ``telegram.Bot`` with the connection's ``BotToken``."""
    (token,) = required(connection, "BotToken")
    return Bot(token=token)
