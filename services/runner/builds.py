"""Build files on local disk: unpacked once per build into the runner's cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath


def safe_relpath(path: str) -> PurePosixPath:
    """Rejects absolute paths and ``..`` so a build can only write inside its directory."""
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"unsafe path in build: {path!r}")
    return p


def unpack_build(cache: Path, build_id: str, files: dict[str, bytes]) -> Path:
    """Writes ``files`` to ``cache/<build_id>`` (atomically: a rename) and returns that dir."""
    final = cache / build_id
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{build_id}-", dir=cache))
    try:
        for name, data in files.items():
            dest = tmp / safe_relpath(name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        tmp.chmod(0o755)  # readable by the workers' users, who cannot list the cache
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():  # not a lost race with another session of the same build
            raise
    return final


def worker_env(
    base: dict[str, str], variables: dict[str, str], internal_prefixes: tuple[str, ...]
) -> dict[str, str]:
    """The worker's environment: ours minus the system's own settings, plus the project's vars."""
    env = {k: v for k, v in base.items() if not k.startswith(internal_prefixes)}
    env.update(variables)
    return env
