"""Hiding a directory from sandboxed workers (``hide``). The standard library alone: a
root runner's package installs run it from this file in an isolated interpreter."""

from __future__ import annotations

import ctypes
import os

# unshare(2) and mount(2) flags
_CLONE_NEWNS = 0x20000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_SLAVE = 32, 4096, 16384, 1 << 19
done = False  # whether this process (a fork server's workers: their parent) hid a directory


def hide(folder: str, keep: str = "/etc/resolv.conf") -> None:
    """Puts an empty, read-only directory over ``folder`` (``/run``, where this host's
    services keep their Unix sockets: PostgreSQL's, MySQL's, D-Bus's, Docker's) for this
    process and its descendants, in a mount namespace of their own: a socket whose
    permissions let every local user in is out of a handler's reach, as the network
    fence keeps it off the host's addresses. The file ``keep`` (``/etc/resolv.conf``)
    points to, when it is in there (systemd-resolved), stays readable. Runs as root
    (CAP_SYS_ADMIN), before the process becomes its user; raises OSError when it cannot
    (the runner asked for it knowing it could: the worker must not run without it)."""
    global done
    libc = ctypes.CDLL(None, use_errno=True)
    resolv = os.path.realpath(keep)
    kept = resolv if resolv.startswith(folder.rstrip("/") + "/") else ""
    kept_fd = -1

    def call(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot hide {folder} from handlers: {what}: {os.strerror(err)}")

    try:
        call(libc.unshare(_CLONE_NEWNS), "unshare")
        # nothing mounted here reaches the host's namespace
        call(libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None), "mount --make-rslave /")
        if kept and os.path.isfile(kept):  # opened in this namespace: a bind's source must be
            kept_fd = os.open(kept, os.O_RDONLY | os.O_CLOEXEC)
        flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        where = os.fsencode(folder)
        call(libc.mount(b"tmpfs", where, b"tmpfs", flags, b"mode=0755,size=64k"), "mount")
        if kept_fd >= 0:
            os.makedirs(os.path.dirname(kept), mode=0o755, exist_ok=True)
            open(kept, "x").close()
            source = f"/proc/self/fd/{kept_fd}".encode()
            call(libc.mount(source, os.fsencode(kept), None, _MS_BIND, None), "bind resolv.conf")
            ro = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags
            call(libc.mount(None, os.fsencode(kept), None, ro, None), "remount resolv.conf")
        call(libc.mount(None, where, None, _MS_REMOUNT | _MS_RDONLY | flags, None), "remount")
    finally:
        if kept_fd >= 0:
            os.close(kept_fd)
    done = True
