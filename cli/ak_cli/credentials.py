"""The CLI's API tokens: ``<config home>/credentials``, a YAML map of ``host[:port]`` to
token (as AutoKitteh keeps them; mode 0600), overridden by ``AK_TOKEN``."""

from __future__ import annotations

import os
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


def load() -> dict[str, str]:
    import yaml  # ~10 ms, after the file is known to be there

    try:
        data = yaml.safe_load(path().read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as e:
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
