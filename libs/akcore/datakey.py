"""The data key: AES-GCM encryption of what handlers produce (journal payloads, credential
headers) wherever it rests, with rotation.

The data keys are derived (HKDF-SHA256) from the secrets keys (``akcore.secrets``), so
one keyring serves both: the first key seals, every key opens. A sealed value names the key
that sealed it (a 4-byte id), so an old key keeps opening what it sealed after a new one
becomes primary. Associated data binds a ciphertext to its place (a session and record
number, an event and header name): moved elsewhere, it does not open.

Sealed bytes: ``MAGIC`` (3 bytes, the format version), key id (4), nonce (12), ciphertext
and tag. Sealed text: ``TEXT_PREFIX`` and the sealed bytes in base64.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import AKError

MAGIC = b"ak\x01"
TEXT_PREFIX = "ak1:"
_INFO = b"autokitteh data key v1"
_ID, _NONCE = 4, 12
_HEAD = len(MAGIC) + _ID + _NONCE


class SealError(AKError):
    """A sealed value that does not open: no key of the keyring sealed it, or it was altered
    or moved from where it was sealed."""


def derive(secrets_key: bytes) -> bytes:
    """The 256-bit data key of one secrets key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
    return hkdf.derive(secrets_key)


def key_id(data_key: bytes) -> bytes:
    return hashlib.sha256(b"ak key id" + data_key).digest()[:_ID]


def is_sealed(blob: bytes) -> bool:
    return isinstance(blob, bytes) and blob[: len(MAGIC)] == MAGIC


def sealed_by(blob: bytes) -> bytes | None:
    """The id of the key that sealed ``blob`` (None: not sealed bytes)."""
    if not is_sealed(blob) or len(blob) < _HEAD + 16:
        return None
    return blob[len(MAGIC) : len(MAGIC) + _ID]


class Keyring:
    """Seals with the primary (first) key; opens with whichever key sealed."""

    def __init__(self, secrets_keys: Sequence[bytes]) -> None:
        if not secrets_keys:
            raise AKError("no secrets key: the data key is derived from one")
        derived = [derive(k) for k in secrets_keys]
        self._keys = {key_id(k): AESGCM(k) for k in derived}
        self._primary_id = key_id(derived[0])
        self._primary = self._keys[self._primary_id]

    @property
    def primary_id(self) -> bytes:
        return self._primary_id

    def holds(self, key_id: bytes) -> bool:
        """Whether one of its keys has this id."""
        return key_id in self._keys

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        sealed = self._primary.encrypt(nonce, plaintext, aad)
        return b"".join((MAGIC, self._primary_id, nonce, sealed))

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Raises SealError."""
        if not is_sealed(blob) or len(blob) < _HEAD + 16:
            raise SealError("a value that should be sealed is not (was it written by hand?)")
        aes = self._keys.get(blob[len(MAGIC) : len(MAGIC) + _ID])
        if aes is None:
            raise SealError(
                "a value was sealed with a secrets key this service does not have: give it every "
                "key still in use (AK_SECRETS__KEYS, or the lines of secrets.key in the data home)"
            )
        try:
            return aes.decrypt(blob[len(MAGIC) + _ID : _HEAD], blob[_HEAD:], aad)
        except InvalidTag:
            raise SealError("a sealed value was altered or moved from its place") from None

    def seal_text(self, plaintext: bytes, aad: bytes) -> str:
        """Seals into text (for JSON columns and msgpack strings)."""
        return TEXT_PREFIX + base64.b64encode(self.seal(plaintext, aad)).decode()

    def open_text(self, sealed: str, aad: bytes) -> bytes:
        """Raises SealError."""
        if not isinstance(sealed, str) or not sealed.startswith(TEXT_PREFIX):
            raise SealError("a value that should be sealed is not (was it written by hand?)")
        try:
            blob = base64.b64decode(sealed[len(TEXT_PREFIX) :], validate=True)
        except ValueError:
            raise SealError("a sealed value is not valid base64") from None
        return self.open(blob, aad)
