"""``<config home>/config.yaml``: settings the CLI (and ``ak up``) read before the
environment, as AutoKitteh's; ``ak config list|set`` show and change it.

A key is the name of an ``AK_`` environment variable in lower case with ``__`` as ``.``
(``http.service_url`` is ``AK_HTTP__SERVICE_URL``). The environment wins over the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from akcore import config
from akcore.errors import AKError, InvalidArgument

FILE = "config.yaml"


def path() -> Path:
    return config.config_home() / FILE


def env_names() -> list[str]:
    """Every ``AK_`` variable the services and the CLI read (``akcore.config``)."""
    names = {
        v
        for k, v in vars(config).items()
        if k.startswith("ENV_") and isinstance(v, str) and v.startswith("AK_")
    }
    return sorted(names)


def key_of(env: str) -> str:
    return env.removeprefix("AK_").lower().replace("__", ".")


def env_of(key: str) -> str:
    return "AK_" + key.upper().replace(".", "__")


def known_keys() -> list[str]:
    return sorted(key_of(n) for n in env_names())


def _flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if not isinstance(tree, dict):
        return {prefix: "" if tree is None else str(tree)} if prefix else {}
    out: dict[str, str] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def read(file: Path | None = None) -> dict[str, str]:
    """The file's settings by key; {} when there is no file."""
    file = file or path()
    if not file.exists():
        return {}
    import yaml  # ~10 ms, paid only by who has the file

    try:
        tree = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise AKError(f'invalid config file "{file}": {e}') from None
    if tree is not None and not isinstance(tree, dict):
        raise AKError(f'invalid config file "{file}": not a mapping of keys to values')
    return _flatten(tree or {})


def load_into_environment() -> None:
    """Puts the file's known settings into the environment where it has none (so ``ak up``'s
    services get them too). An unreadable file is reported by ``ak config``, not here."""
    try:
        settings = read()
    except AKError:
        return
    known = set(known_keys())
    for key, value in settings.items():
        if key in known:
            os.environ.setdefault(env_of(key), value)


def set_key(key: str, value: str) -> None:
    """Merges ``key: value`` (as text) into the file, keeping its other settings."""
    if key not in known_keys():
        raise InvalidArgument(f'key "{key}" is not a valid configuration (see `ak config list`)')
    settings = read()
    settings[key] = value
    tree: dict[str, Any] = {}
    for k, v in sorted(settings.items()):
        node = tree
        *parents, leaf = k.split(".")
        for part in parents:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise AKError(f'invalid config file "{path()}": "{part}" is both a key and a value')
            node = nxt
        node[leaf] = v
    import yaml

    file = path()
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(tree, sort_keys=True))
    tmp.replace(file)


def override(pairs: list[str]) -> None:
    """``-C key=value``: settings over the file and the environment, for one command."""
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known_keys():
            raise InvalidArgument(
                f"invalid -C {pair!r}: use key=value with a key of `ak config list`"
            )
        os.environ[env_of(key)] = value
