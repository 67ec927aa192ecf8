"""``ak version`` and ``ak completion``: what is installed, and shell completion scripts."""

from __future__ import annotations

import json
import platform
import sys

from akcore.errors import InvalidArgument

DIST = "autokitteh-nats"
SHELLS = ("bash", "zsh", "fish", "powershell")
BUILD_PACKAGES = ("nats-py", "sqlmodel", "typer", "fastapi", "uvicorn", "msgpack")


def _version(dist: str) -> str:
    from importlib import metadata  # ~15 ms: only `ak version` reads the installed versions

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def describe(full: bool, build: bool, as_json: bool) -> str:
    info = {"version": _version(DIST) or "unknown"}
    if full:
        info["python"] = platform.python_version()
        info["path"] = sys.prefix
    if build:
        info.update({p: v for p in BUILD_PACKAGES if (v := _version(p))})
    if as_json:
        return json.dumps(info)
    text = info["version"]
    if full:
        text += f" python {info['python']} in {info['path']}"
    if build:
        text += "\n\n" + "\n".join(f"{p} {info[p]}" for p in BUILD_PACKAGES if p in info)
    return text


def enable_completion() -> None:
    """Lets ``ak`` answer the completion scripts' requests (``_AK_COMPLETE`` set)."""
    from typer._completion_classes import completion_init

    completion_init()


def completion_script(shell: str) -> str:
    """The script that makes ``shell`` complete ``ak`` commands and options."""
    if shell not in SHELLS:
        raise InvalidArgument(f"unknown shell {shell!r}: use one of {', '.join(SHELLS)}")
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="ak", complete_var="_AK_COMPLETE", shell=shell)
