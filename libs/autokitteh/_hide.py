"""Hiding a directory from sandboxed workers (``hide``). The standard library alone: a
root runner's package installs run it from this file in an isolated interpreter."""

from __future__ import annotations

import ctypes
import os

# unshare(2) and mount(2) flags
_CLONE_NEWNS = 0x20000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_SLAVE = 32, 4096, 16384, 1 << 19


def hide(folder: str, keep: str = "/etc/resolv.conf") -> None:
    """Puts an empty, read-only directory over ``folder`` (``/run``, where this host's
    services keep their Unix sockets: PostgreSQL's, MySQL's, D-Bus's, Docker's) for this
    process and its descendants, in a mount namespace of their own: a socket whose
    permissions let every local user in is out of a handler's reach, as the network
    fence keeps it off the host's addresses. When ``keep`` (``/etc/resolv.conf``) leads in
    there (systemd-resolved, NetworkManager), the links on its way are made again and the
    directory of the file it names is mounted, read-only, where it was: names resolve, and
    a new file renamed over the old one is seen. Runs as root (CAP_SYS_ADMIN), before the
    process becomes its user; raises OSError when it cannot (the runner checked that it
    could: the worker must not run without it). On Linux 5.8 and later, ``/proc`` is
    mounted again in there with ``hidepid=2``: a worker's user sees its own processes
    alone, not the host's or other workers' (their command lines, their users)."""
    libc = ctypes.CDLL(None, use_errno=True)
    links, kept = way_into(folder, keep)
    kept_fd = -1

    def call(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot hide {folder} from handlers: {what}: {os.strerror(err)}")

    umask = os.umask(0o022)  # (what is made in there is for every worker user to read)
    try:
        call(libc.unshare(_CLONE_NEWNS), "unshare")
        # nothing mounted here reaches the host's namespace
        call(libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None), "mount --make-rslave /")
        if kept:  # opened in this namespace: a bind's source must be
            kept_fd = os.open(kept, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        where = os.fsencode(folder)
        call(libc.mount(b"tmpfs", where, b"tmpfs", flags, b"mode=0755,size=64k"), "mount")
        for path, target in links:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(target, path)
        if kept_fd >= 0:
            os.makedirs(kept, exist_ok=True)
            source = f"/proc/self/fd/{kept_fd}".encode()
            call(libc.mount(source, os.fsencode(kept), None, _MS_BIND, None), f"bind {kept}")
            ro = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags
            call(libc.mount(None, os.fsencode(kept), None, ro, None), f"remount {kept}")
        call(libc.mount(None, where, None, _MS_REMOUNT | _MS_RDONLY | flags, None), "remount")
        if own_proc():  # a /proc of this namespace's own, showing a user its processes alone
            # (Where the kernel refuses it, /proc stays as it was: /run is hidden all the same.)
            libc.mount(b"proc", b"/proc", b"proc", flags, b"hidepid=2")
    finally:
        os.umask(umask)
        if kept_fd >= 0:
            os.close(kept_fd)


def private_temp(folders: list[str], size_mb: int = 0) -> None:
    """Puts a memory file system of this process's own over each of ``folders`` (``/tmp``,
    ``/var/tmp``: directories every user may write to, on the machine's disk), in a mount
    namespace of its own: what a handler writes there is memory, which the kernel counts
    against its worker's memory limit where a control group holds it, and which is at most
    ``size_mb`` MiB in each (0: the kernel's default, half the machine's memory); it goes
    with the worker, and no other worker (another project's) sees it. Before, a handler
    under a 256 MiB limit wrote gigabytes to the disk that holds the data home, the
    database and NATS's store, which stop when it is full. Runs as root, before the
    process becomes its user; raises OSError when it cannot."""
    libc = ctypes.CDLL(None, use_errno=True)

    def call(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            why = f"{what}: {os.strerror(err)}"
            raise OSError(err, f"cannot give handlers temporary directories of their own: {why}")

    call(libc.unshare(_CLONE_NEWNS), "unshare")
    call(libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None), "mount --make-rslave /")
    options = b"mode=1777" + (f",size={size_mb}m".encode() if size_mb > 0 else b"")
    for folder in folders:
        where = os.fsencode(folder)
        call(libc.mount(b"tmpfs", where, b"tmpfs", _MS_NOSUID | _MS_NODEV, options), folder)


def own_proc() -> bool:
    """Whether a /proc mounted here has options of its own (Linux 5.8 and later): before,
    its ``hidepid`` would change the host's /proc too."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


def way_into(folder: str, keep: str) -> tuple[list[tuple[str, str]], str]:
    """The symbolic links inside ``folder`` on the way from ``keep`` to the file it names
    (each with its target, as written), and that file's directory when it is inside
    ``folder`` ("" when it is not, or there is no such file)."""
    prefix = folder.rstrip("/") + "/"
    links: list[tuple[str, str]] = []
    path = os.path.abspath(keep)
    for _ in range(40):  # (as the kernel, at most 40 links)
        path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if not os.path.islink(path):
            break
        target = os.readlink(path)
        if path.startswith(prefix):
            links.append((path, target))
        path = os.path.join(os.path.dirname(path), target)
    else:
        return [], ""  # a loop
    if not path.startswith(prefix) or not os.path.isfile(path):
        return links, ""
    return links, os.path.dirname(path)
