"""API tokens: how they are made, and the digest under which the store keeps them.

A token is ``akt_`` and 43 characters of 256 random bits; the store keeps only its SHA-256
digest, so neither the database nor NATS ever carries a raw token.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "akt_"
# A bootstrap token an operator makes (``AK_AUTH__BOOTSTRAP_TOKEN_FILE``) is at least this
# long; tokens the system makes are longer.
MIN_LENGTH = 32
# A bootstrap file may hold a digest instead of a token (``ak up`` writes one).
DIGEST_PREFIX = "sha256:"
# The store finds a digest by its first characters, then compares all of them in constant time.
KEY_LENGTH = 16
# How the store keeps the digest of a token limited to projects: a store or an ingress of
# an earlier version, which knows no limits, compares it with the bare digest and refuses
# the token instead of taking it for one that may act on every project.
LIMITED_PREFIX = "limited:"


# The longest a token may be made to last (``ak auth create-token --expires``).
MAX_EXPIRES_IN = 100 * 365 * 86400


def expired(at: str) -> str:
    """What a caller whose token expired (at ``at``, RFC 3339) is told."""
    return (
        f"API token expired at {at}: make a new one with `ak auth create-token` (called with "
        "a token that has not expired) and store it with `ak auth set-token <token>`"
    )


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """The hex SHA-256 of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def bootstrap_digest(text: str) -> str:
    """The digest a bootstrap file gives (a raw token, or ``sha256:<hex>``).

    Raises:
        ValueError: saying what a bootstrap file must hold.
    """
    text = text.strip()
    if text.startswith(DIGEST_PREFIX) and is_digest(text[len(DIGEST_PREFIX) :]):
        return text[len(DIGEST_PREFIX) :]
    if len(text) < MIN_LENGTH or any(c.isspace() for c in text):
        raise ValueError(
            f"a token has at least {MIN_LENGTH} characters without spaces (make one with "
            f"`echo akt_$(openssl rand -hex 32)`); a file may also hold {DIGEST_PREFIX}<hex>"
        )
    return digest(text)
