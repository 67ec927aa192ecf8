"""OpenAI (ChatGPT) clients for a ``chatgpt`` connection (``openai ~= 1.57``)."""

from __future__ import annotations

from typing import Any

from openai import OpenAI

from ._helpers import required


def openai_client(connection: str) -> OpenAI:
    """An ``openai.OpenAI`` with the connection's API key (``<connection>__apiKey``)."""
    (key,) = required(connection, "apiKey")
    return OpenAI(api_key=key)


def openai_pydantic_ai_provider(connection: str, **kwargs: Any) -> Any:
    """A pydantic-ai ``OpenAIProvider`` with the connection's API key (needs pydantic-ai)."""
    from pydantic_ai.providers.openai import OpenAIProvider  # only this helper needs it

    (key,) = required(connection, "apiKey")
    return OpenAIProvider(api_key=key, **kwargs)
