"""Room left on the disks a package install writes to: the data home's (its venv), and the
machine's temporary directories where the install does not get its own.

A package's build script is anyone's code, and nothing bounded what it wrote: the disk of
the data home also holds the database and NATS's store, which stop when it is full. An
install is not started, and is stopped, while one of those disks has less than the room
kept free for the services (``AK_RUNNER__PACKAGES_MIN_FREE_MB``) or for
``MIN_FREE_FILES`` more files (a script making empty files by the million runs out the
inodes, not the bytes).
"""

from __future__ import annotations

import os

MIB = 1024 * 1024
MIN_FREE_FILES = 100_000  # files (inodes) a disk written to keeps free, where it counts them


def low(disks: tuple[tuple[str, str], ...], min_free_mb: int) -> str:
    """The first of ``disks`` (what to call it, a path on it) with less room left than
    ``min_free_mb`` MiB or ``MIN_FREE_FILES`` files, said as ``<name>'s disk has N MiB
    free``; "" when none has (or ``min_free_mb`` is 0: not watched). Counted as an
    unprivileged user may use it (``f_bavail``: a build's user never gets root's
    reserve)."""
    if min_free_mb <= 0:
        return ""
    for name, path in disks:
        try:
            fs = os.statvfs(path)
        except OSError:  # (not made yet: the venvs' directory before the first build)
            continue
        free = fs.f_bavail * fs.f_frsize
        if free < min_free_mb * MIB:
            return f"{name}'s disk has {free // MIB} MiB free"
        if fs.f_files and fs.f_favail < MIN_FREE_FILES:
            return f"{name}'s disk has room for {fs.f_favail} more files"
    return ""
