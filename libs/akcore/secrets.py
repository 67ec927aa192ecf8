"""The secrets keys and secret var values at rest.

The keys come from ``AK_SECRETS__KEYS`` (comma-separated), else ``AK_SECRETS__KEY``, else
the lines of ``<data home>/secrets.key`` (owner-only, made with one key if missing). The
first key is the primary: it encrypts; every key decrypts, so a key is rotated by putting a
new one first and keeping the old ones until nothing sealed with them is left. Var values
are Fernet-encrypted; the data key of ``akcore.datakey`` is derived from the same keys.
Values are decrypted only for the runner (the session's environment) and ``--reveal``."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .config import data_home
from .datakey import Keyring
from .errors import AKError

ENV_KEY = "AK_SECRETS__KEY"
ENV_KEYS = "AK_SECRETS__KEYS"
ENV_LOST = "AK_SECRETS__LOST_KEY"  # the ids of keys lost for good (akcore.keycheck.admit)
KEY_FILE = "secrets.key"
PREFIX = "fernet:"

log = logging.getLogger(__name__)


def _given() -> list[bytes] | None:
    """The keys the environment gives, if it gives any."""
    if os.environ.get(ENV_KEYS):
        return [k.strip().encode() for k in os.environ[ENV_KEYS].split(",") if k.strip()]
    if os.environ.get(ENV_KEY):
        return [os.environ[ENV_KEY].strip().encode()]
    return None


def load_keys() -> list[bytes]:
    """The secrets keys, the primary first (see the module)."""
    if (given := _given()) is not None:
        return given
    path: Path = data_home() / KEY_FILE
    if not path.exists():
        _make_key_file(path, announce=True)
    keys = [line.strip() for line in path.read_bytes().splitlines() if line.strip()]
    if not keys:
        raise AKError(f"{path} holds no secrets key: put the key back (from a backup)")
    return keys


def ensure_key_file(announce: bool) -> None:
    """Makes the data home's key file unless keys are given (``ak up``, before it starts
    the services that share it: none of them then makes one, and warns; ``announce``: it
    warns itself, as where services on other hosts may need the key too)."""
    path = data_home() / KEY_FILE
    if _given() is None and not path.exists():
        _make_key_file(path, announce)


def _make_key_file(path: Path, announce: bool) -> None:
    """Writes a new key aside and links it into place: services starting together on a
    new data home all read the one key that got there first, never a half-written file.
    ``announce``: a service made it, which warns (one started without the key may not
    share it with the others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, aside = tempfile.mkstemp(prefix=f".{KEY_FILE}.", dir=path.parent)  # (mode 0600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(aside, path)  # fails if another process's key is there: that one is kept
        if announce:
            log.warning(
                "no secrets key was given (%s): made one in %s; every service of this "
                "system must use the same key: back it up apart from the database",
                ENV_KEY,
                path,
            )
    except FileExistsError:
        pass
    finally:
        os.unlink(aside)


def load_keyring() -> Keyring:
    """The data keyring of the secrets keys."""
    return Keyring(load_keys())


class Sealer:
    """Secret var values: sealed with the primary key, opened with any."""

    def __init__(self, *keys: bytes) -> None:
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except ValueError:
            raise AKError(
                f"a secrets key is not a valid Fernet key (check {ENV_KEYS}, {ENV_KEY} or the "
                f"data home's {KEY_FILE})"
            ) from None

    def seal(self, value: str) -> str:
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise AKError(
                "a secret cannot be decrypted with these secrets keys: was a key (data home "
                f"{KEY_FILE}, {ENV_KEYS} or {ENV_KEY}) replaced instead of rotated?"
            ) from None
