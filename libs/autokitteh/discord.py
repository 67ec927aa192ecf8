"""Discord clients for a ``discord`` connection (``discord.py ~= 2.5``)."""

from __future__ import annotations

from typing import Any

import discord

from ._helpers import required


def discord_client(connection: str, intents: Any = None, **kwargs: Any) -> discord.Client:
    """A ``discord.Client`` (default intents unless given). The token is not passed in:
    run it with ``client.run(bot_token(connection))``."""
    required(connection, "BotToken")
    return discord.Client(intents=intents or discord.Intents.default(), **kwargs)


def bot_token(connection: str) -> str:
    """The connection's ``BotToken``."""
    (token,) = required(connection, "BotToken")
    return token
