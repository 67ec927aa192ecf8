"""Secret var values at rest: Fernet-encrypted with a key kept in the data home (owner-only)
or given by ``AK_SECRETS__KEY``. Values are decrypted only for the worker and ``--reveal``."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from .config import data_home
from .errors import AKError

ENV_KEY = "AK_SECRETS__KEY"
PREFIX = "fernet:"


def load_key() -> bytes:
    """The secrets key: from the environment, else ``<data home>/secrets.key``, made if missing."""
    if os.environ.get(ENV_KEY):
        return os.environ[ENV_KEY].encode()
    path: Path = data_home() / "secrets.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
    return path.read_bytes().strip()


class Sealer:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError:
            raise AKError(f"the secrets key is not a valid Fernet key (check {ENV_KEY})") from None

    def seal(self, value: str) -> str:
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise AKError(
                "a secret cannot be decrypted with this secrets key: was the key "
                f"(data home secrets.key or {ENV_KEY}) replaced?"
            ) from None
