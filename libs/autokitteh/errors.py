"""Errors raised by the SDK, with AutoKitteh's names and constructor arguments.

AutoKittehError           root of everything the SDK raises
 ├── NotAValue            an object that cannot cross from one session to another
 ├── MalformedValue       bytes or data that are not an encoded value (autokitteh._values)
 ├── AtlassianOAuthError  an Atlassian OAuth connection, which the helpers cannot use
 ├── ConnectionInitError  a connection the handler uses is not initialized
 ├── EnvVarError          an environment variable a helper needs is missing or invalid
 └── OAuthRefreshError    refreshing a connection's OAuth token failed
AuthenticationError       a client helper could not authenticate (not an AutoKittehError)
"""

from __future__ import annotations

from typing import Any


class AutoKittehError(Exception):
    """Something the system refused or could not do for the handler."""


class NotAValue(AutoKittehError, TypeError):
    """An object that is not one of AutoKitteh's value types."""


class MalformedValue(AutoKittehError, ValueError):
    """Data that does not decode into a value (not made by the codec, or over its limits)."""


class AtlassianOAuthError(AutoKittehError):
    """An Atlassian OAuth connection given to a Jira or Confluence helper, which need a
    token connection (``autokitteh.atlassian``)."""

    def __init__(self, connection: str) -> None:
        # AutoKitteh's message, as its published SDK words it.
        super().__init__(
            f"API calls not supported by {connection!r}, use a token-based connection instead"
        )
        self.connection = connection

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.connection,))


class ConnectionInitError(AutoKittehError):
    """The connection named ``connection`` has not been initialized (its vars are missing)."""

    def __init__(self, connection: str) -> None:
        super().__init__(f"AutoKitteh connection {connection!r} not initialized")
        self.connection = connection

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.connection,))


class EnvVarError(AutoKittehError):
    """The environment variable ``env_var`` is ``desc`` (for example "missing")."""

    def __init__(self, env_var: str, desc: str) -> None:
        super().__init__(f"Environment variable {env_var!r} is {desc}")
        self.env_var, self.desc = env_var, desc

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.env_var, self.desc))


class OAuthRefreshError(AutoKittehError):
    """Refreshing the OAuth token of ``connection`` failed with ``error``."""

    def __init__(self, connection: str, error: Any) -> None:
        super().__init__(f"OAuth refresh failed for {connection!r} connection: {error}")
        self.connection, self.error = connection, error

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.connection, self.error))


class AuthenticationError(Exception):
    """A client helper could not authenticate ``connection`` with its service: ``reason``."""

    def __init__(self, connection: str, reason: str) -> None:
        super().__init__(f"Authentication failed for {connection!r} connection: {reason}")
        self.connection, self.reason = connection, reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.connection, self.reason))
