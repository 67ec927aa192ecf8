"""Reddit clients for a ``reddit`` connection (``praw ~= 7.8``)."""

from __future__ import annotations

import praw

from ._helpers import required, var


def reddit_client(connection: str) -> praw.Reddit:
    """A ``praw.Reddit`` with the connection's app (``client_id``, ``client_secret``,
    ``user_agent``): as a script app when it also holds ``username`` and ``password``, else
    read-only."""
    client_id, secret, agent = required(connection, "client_id", "client_secret", "user_agent")
    username, password = var(connection, "username"), var(connection, "password")
    if username and password:
        return praw.Reddit(
            client_id=client_id,
            client_secret=secret,
            user_agent=agent,
            username=username,
            password=password,
        )
    return praw.Reddit(client_id=client_id, client_secret=secret, user_agent=agent)
