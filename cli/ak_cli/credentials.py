"""The CLI's API tokens: ``<config home>/credentials``, a YAML map of ``host[:port]`` to
token (as AutoKitteh keeps them; mode 0600), overridden by ``AK_TOKEN``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from akcore import config
from akcore.errors import AKError

DEFAULT_ENTRY = "default"  # used for a server without an entry of its own


def path() -> Path:
    return config.config_home() / "credentials"


def host_key(url: str) -> str:
    """``host[:port]`` of a service URL, the key of its token."""
    return urlsplit(url).netloc or url


# A line as ``save`` writes a token of ``akcore.tokens`` for a host:port or the default
# entry: YAML reads it as these two strings (the host has a letter or a dot, so YAML
# takes no host:port for a number).
_PLAIN_LINE = re.compile(
    r"((?:[A-Za-z0-9-]*[A-Za-z.][A-Za-z0-9.-]*:[0-9]+)|default): (akt_[A-Za-z0-9_-]+)"
)


def _read_plain(text: str) -> dict[str, str] | None:
    """The entries of a file made only of such lines; None for any other file (then YAML
    reads it: importing yaml is ~10 ms of each command)."""
    entries = {}
    for line in text.splitlines():
        m = _PLAIN_LINE.fullmatch(line)
        if m is None:
            return None
        entries[m[1]] = m[2]
    return entries


def load() -> dict[str, str]:
    try:
        text = path().read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise AKError(f"cannot read {path()}: {e}; fix or delete it") from None
    plain = _read_plain(text)
    if plain is not None:
        return plain
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise AKError(f"cannot read {path()}: {e}; fix or delete it") from None
    if not isinstance(data, dict):
        raise AKError(f"{path()} is not a map of host[:port] to token; fix or delete it")
    return {str(k): str(v) for k, v in data.items()}


def save(key: str, token: str) -> None:
    """Stores ``token`` for ``key`` (an empty token deletes the entry), owner-only."""
    entries = load()
    if token:
        entries[key] = token
    else:
        entries.pop(key, None)
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    import yaml

    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(yaml.safe_dump(entries) if entries else "")
    os.replace(tmp, target)


def token_for(url: str) -> str:
    """The token to send to ``url``: ``AK_TOKEN``, else its entry, else the default one."""
    if os.environ.get(config.ENV_TOKEN):
        return os.environ[config.ENV_TOKEN].strip()
    entries = load()
    return entries.get(host_key(url)) or entries.get(DEFAULT_ENTRY, "")
