"""Build files on local disk: each build unpacked once into a cache that the runners of one
data home share, and removed again when no session needs it (``BuildCache``). The projects'
Python environments are kept the same way (``DirCache``, ``pyenv.VenvCache``)."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from akcore.buildfiles import check_build

log = logging.getLogger(__name__)

# A directory of the cache that starts with a dot is an unpack under way (or one a crash
# cut short), or a build being removed: left alone for this long, then removed.
STALE_SECONDS = 3600.0


class Held:
    """A session's hold on a directory of a ``DirCache`` (its build's, its environment's):
    while it is open, no runner removes the directory (a shared ``flock`` on the
    directory's lock file; ``prune`` needs an exclusive one). The lock files are root's
    alone, beside the cache: a worker's user can read the directory, and a lock on that it
    took would keep sessions from it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # Which build of the directory is held (for a venv: its marker's identity), where
        # the cache tells builds apart: one removed and made again is another.
        self.build: object = None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # (releases the lock)
            self._fd = -1


class DirCache:
    """Directories under ``root``, one per name, that sessions hold while they use one and
    that are removed when none does.

    A session holds its directory (``hold``) until its attempt ends, and each hold marks the
    directory used (its mtime, which every runner sharing the cache sees). ``prune`` removes
    directories no one holds: those not used for ``idle`` seconds (0: kept however old),
    then the least recently used while all of them take more than ``max_bytes`` of disk.
    ``what`` names them in the log."""

    what = "directories"

    def __init__(self, root: Path, max_bytes: int, idle: float, locks: Path | None = None) -> None:
        self.root, self.max_bytes, self.idle = root, max_bytes, idle
        # A lock file per directory (``locks``: where; by default beside ``root``).
        self.locks = locks or root.with_name(root.name + "-locks")
        # Each directory's disk use, and what it was measured as (``_stamp``).
        self._measured: dict[str, tuple[object | None, int]] = {}
        self._pruning = threading.Lock()

    def _leftover(self, name: str) -> bool:
        """Whether an entry of ``root`` is work a runner left (removed once stale)."""
        return name.startswith(".")

    @contextmanager
    def _exclusive(self, name: str) -> Iterator[None]:
        """Held while ``name`` is removed (with the holders' lock): what else must not use
        it meanwhile. Raises OSError (BlockingIOError) when it cannot be removed now."""
        yield

    def _detach(self, name: str) -> None:
        """What goes with ``name``'s directory besides it (once it is renamed away)."""

    def _stamp(self, name: str) -> object | None:
        """What tells ``name``'s directory as it was measured from the same directory
        changed since (measured again then); None while it is not whole (measured at each
        prune, never kept). A directory of this cache is whole once there."""
        return ""

    def hold(self, name: str) -> Held | None:
        """Holds ``name``'s directory for a session; None when it is not there (never made,
        or removed meanwhile: make it again)."""
        path = self.root / name
        fd = self._lock_file(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused: it is being removed
            if not self._still(fd, name) or not path.is_dir():  # (removed meanwhile)
                raise FileNotFoundError(path)
            os.utime(path)  # its last use
        except OSError:
            os.close(fd)
            return None
        return Held(fd)

    def _lock_file(self, name: str) -> int:
        self.locks.mkdir(mode=0o700, parents=True, exist_ok=True)
        return open_lock_file(self.locks / name)

    def _still(self, fd: int, name: str) -> bool:
        """Whether the lock file open as ``fd`` is still ``name``'s (a remover unlinks it,
        holding it, after the directory is gone: a lock taken on it after that is void)."""
        try:
            there, held = os.stat(self.locks / name), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)

    def prune(self, keep: str = "") -> list[str]:
        """Removes what ``DirCache`` says (but ``keep``, one just made for a session);
        returns the names of the directories removed."""
        with self._pruning:
            now = time.time()
            found: list[tuple[float, str]] = []
            try:
                entries = list(os.scandir(self.root))
            except FileNotFoundError:  # nothing unpacked yet
                entries = []
            for entry in entries:
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                    if entry.name.startswith("."):
                        if self._leftover(entry.name) and now - mtime > STALE_SECONDS:
                            shutil.rmtree(entry.path, ignore_errors=True)
                    elif entry.is_dir(follow_symlinks=False):
                        name, stamp = entry.name, self._stamp(entry.name)
                        known = self._measured.get(name)
                        if stamp is None or known is None or known[0] != stamp:
                            self._measured[name] = (stamp, disk_usage(Path(entry.path)))
                        found.append((mtime, name))
                except FileNotFoundError:  # removed meanwhile by another runner
                    continue
            total = sum(self._measured[name][1] for _, name in found)
            removed = []
            for mtime, name in sorted(found):  # least recently used first
                unused = self.idle > 0 and now - mtime >= self.idle
                if not unused and total <= self.max_bytes:
                    break
                if name != keep and self._remove(name):
                    total -= self._measured.pop(name, (None, 0))[1]
                    removed.append(name)
            if removed:
                log.info("removed %d %s: %s", len(removed), self.what, ", ".join(removed))
            return removed

    def _remove(self, name: str) -> bool:
        """Removes one directory unless a session holds it."""
        path = self.root / name
        try:
            fd = self._lock_file(name)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not self._still(fd, name):
                return False
            with self._exclusive(name):
                # Renamed first: a runner that looks for it now makes it again.
                gone = self.root / f".removing-{name}-{secrets.token_hex(4)}"
                try:
                    os.rename(path, gone)
                except FileNotFoundError:  # another runner's prune was first
                    gone = path  # (nothing there to remove)
                self._detach(name)
            os.unlink(self.locks / name)  # (still held: a hold opened before is void)
        except OSError:  # held (BlockingIOError), or removed meanwhile
            return False
        finally:
            os.close(fd)
        if gone != path:
            shutil.rmtree(gone, ignore_errors=True)
        return True


class BuildCache(DirCache):
    """The builds unpacked under ``root``, a directory each (``root/<build id>``), pruned as
    ``DirCache`` says.

    A directory is whole or missing: a build is written under another name and renamed
    into place. A session holds its build from before its worker starts until its
    attempt ends."""

    what = "unpacked builds"

    def unpack(self, build_id: str, files: dict[str, bytes]) -> Path:
        """Writes ``files`` to ``root/<build_id>`` unless it is there; returns that directory.
        Raises InvalidArgument for a build over the limits (one stored before them)."""
        final = self.root / build_id
        if final.is_dir():
            return final
        check_build(files)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{build_id}-", dir=self.root))
        try:
            for name, data in files.items():
                dest = tmp.joinpath(*name.split("/"))
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            tmp.chmod(0o755)  # readable by the workers' users, who cannot list the cache
            size = disk_usage(tmp)
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.is_dir():  # not a lost race with another session of the same build
                raise
            return final
        self._measured[build_id] = (self._stamp(build_id), size)
        return final


def open_lock_file(path: Path) -> int:
    """A lock file's descriptor, the file made (the owner's alone) if missing; never
    through a link."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def disk_usage(root: Path) -> int:
    """Bytes of disk a directory tree takes (its blocks: a one-byte file takes 4 KiB).

    Never through a link: the walk holds each directory open and looks at what it lists
    relative to it (``os.fwalk``), so a directory swapped for a link while it walks leads
    nowhere. A project environment is measured while its builder (anyone's build script)
    may still write to it: walked by path, a directory it listed and then replaced with a
    link to ``/`` had root walk the machine and count it all as that venv's."""
    total = 0
    for _, dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in (*dirs, *files):
            total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512
    return total
