"""Type-prefixed, sortable ids (TypeID: prefix + 26 chars of Crockford base32 of a UUIDv7)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
PREFIXES = ("prj", "env", "con", "bld", "dep", "trg", "ses", "evt", "sig", "run", "tok")
_ID_RE = re.compile(r"^(?P<prefix>[a-z]+)_(?P<suffix>[0-7][" + ALPHABET + r"]{25})$")
_ID_SHAPE = re.compile(r"(?:" + "|".join(PREFIXES) + r")_[0-9a-z]{26}")


def _uuid7_int() -> int:
    return _uuid7_from(time.time_ns() // 1_000_000, int.from_bytes(os.urandom(10), "big"))


def _uuid7_from(ms: int, rand: int) -> int:
    rand_a = (rand >> 62) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    return (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b


_FROM_BASE32 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", ALPHABET.encode())
_TO_BASE32 = str.maketrans(ALPHABET, "abcdefghijklmnopqrstuvwxyz234567")


def _encode(n: int) -> str:
    """26 Crockford base32 characters of a 128-bit number (standard base32 of it, moved to
    the top of 160 bits, read in the Crockford alphabet)."""
    return base64.b32encode((n << 30).to_bytes(20, "big"))[:26].translate(_FROM_BASE32).decode()


def derived_id(prefix: str, ms: int, key: str) -> str:
    """A stable id for ``key``: time-ordered by ``ms``, the rest from a hash of ``key``.

    Lets a retried step (a redelivered event) name the same thing again, so JetStream's
    de-duplication can drop the repeat.
    """
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    rand = int.from_bytes(hashlib.sha256(key.encode()).digest()[:10], "big")
    return f"{prefix}_{_encode(_uuid7_from(ms, rand))}"


def time_ms(typed_id: str) -> int:
    """The time (Unix milliseconds) a well-formed id carries; 0 for anything else."""
    m = _ID_RE.match(typed_id)
    if m is None:
        return 0
    text = m.group("suffix").translate(_TO_BASE32).upper() + "A" * 6  # back to 160 bits
    n = int.from_bytes(base64.b32decode(text), "big") >> 30  # the UUIDv7 (see _encode)
    return n >> 80


def new_id(prefix: str) -> str:
    """Returns a new id such as ``ses_01jv3wxp0dem39cv3v2xvr29wt``."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}_{_encode(_uuid7_int())}"


def new_slug() -> str:
    """Returns an unguessable webhook slug: 26 random lowercase base32 characters."""
    return "".join(secrets.choice(ALPHABET) for _ in range(26))


def id_prefix(text: str) -> str | None:
    """Returns the prefix of a well-formed id, or None when ``text`` is not an id."""
    m = _ID_RE.match(text)
    return m.group("prefix") if m and m.group("prefix") in PREFIXES else None


def is_id(text: str, prefix: str) -> bool:
    return id_prefix(text) == prefix


def looks_like_id(text: str) -> bool:
    """Whether ``text`` has the shape of an id: one of our prefixes, ``_`` and 26 lowercase
    letters or digits (an id where a name is expected is looked up as an id)."""
    return _ID_SHAPE.fullmatch(text) is not None
