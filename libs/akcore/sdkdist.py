"""The ``autokitteh`` SDK as something to put into another Python: a wheel or a plain copy.

The worker runs inside the user's Python environment and speaks the runner's frame protocol,
so that environment must hold *this* SDK, not whatever ``pip install autokitteh`` would fetch.
The files come from the installed ``autokitteh`` package; no build tool or network is needed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import zipfile
from functools import cache
from importlib import metadata
from pathlib import Path

import autokitteh

DIST_NAME = "autokitteh"
_DIST_OF_SYSTEM = "autokitteh-nats"


def package_dir() -> Path:
    return Path(autokitteh.__file__).resolve().parent


@cache
def files() -> dict[str, bytes]:
    """The SDK's source files by path (``autokitteh/...``), without byte code."""
    root = package_dir()
    return {
        f"autokitteh/{p.relative_to(root).as_posix()}": p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".typed")
    }


@cache
def digest() -> str:
    """Changes whenever any SDK file does: decides when an environment needs the SDK again."""
    h = hashlib.sha256()
    for name, data in files().items():
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def version() -> str:
    try:
        return metadata.version(_DIST_OF_SYSTEM)
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _record_hash(data: bytes) -> str:
    b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={b64}"


def build_wheel(out_dir: Path) -> Path:
    """Writes ``autokitteh-<version>-py3-none-any.whl`` into ``out_dir`` and returns its path."""
    ver = version()
    info = f"{DIST_NAME}-{ver}.dist-info"
    entries = dict(files())
    entries[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {ver}\n"
        "Summary: AutoKitteh Python SDK (the copy that matches this autokitteh server)\n"
        "Requires-Python: >=3.11\n"
    ).encode()
    entries[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: ak\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in entries.items())
    entries[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{DIST_NAME}-{ver}-py3-none-any.whl"
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    tmp.replace(path)
    return path


def write_copy(parent: Path) -> Path:
    """A plain copy of the package under ``parent/<digest>/`` (for PYTHONPATH); returns the
    directory to put on the path. Written once per SDK version, atomically: each writer
    fills a directory of its own and renames it into place, so writers racing (sessions
    starting together, several runners) never see or leave a partial copy."""
    final = parent / digest()
    if (final / "autokitteh" / "__init__.py").is_file():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest()}.", suffix=".tmp", dir=parent))
    try:
        for name, data in files().items():
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(0o644)
        for top, _, _ in os.walk(tmp):  # readable by the workers' users, whatever the umask
            os.chmod(top, 0o755)
        tmp.rename(final)
    except OSError:  # another writer won the race (or the disk failed: say so below)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "autokitteh" / "__init__.py").is_file():
            raise
    return final
