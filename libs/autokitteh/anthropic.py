"""Anthropic clients for an ``anthropic`` connection (``anthropic ~= 0.75``)."""

from __future__ import annotations

from typing import Any

from anthropic import Anthropic

from ._helpers import required


def anthropic_client(connection: str) -> Anthropic:
    """An ``anthropic.Anthropic`` with the connection's API key (``<connection>__api_key``)."""
    (key,) = required(connection, "api_key")
    return Anthropic(api_key=key)


def anthropic_pydantic_ai_provider(connection: str, **kwargs: Any) -> Any:
    """A pydantic-ai ``AnthropicProvider`` with the connection's API key (needs pydantic-ai)."""
    from pydantic_ai.providers.anthropic import AnthropicProvider  # only this helper needs it

    (key,) = required(connection, "api_key")
    return AnthropicProvider(api_key=key, **kwargs)
