"""The worker sandbox: what a handler's process may see and use.

A runner started as root runs each worker process as a user id of its own, taken from a
range no account uses (``AK_RUNNER__WORKER_UIDS``) and held for the process's life. That
user cannot read the data home (the secrets key, the database, NATS's store), the
services' ``/proc/<pid>/environ``, or another worker's memory; and every process it leaves
behind is found by its user id and killed when the worker goes, whatever process group or
session it moved to; its files in the directories every user may write to and its System V
IPC objects go then too. Limits (address space, processes of the user) are set by the worker
on itself before the handler runs; all its processes together are held to the memory limit
by the kernel where the machine allows a control group per user id (``akcore.cgroups``),
and by the memory watch (its processes and System V memory, twice a second). A runner
that is not root cannot switch users: its workers run as it does, with the same limits and
environment rules.

Every worker, sandboxed or not, gets only a minimal environment
(``akcore.config.worker_env``): no NATS address, no database DSN, no key, no ``AK_*``
setting. The project's variables come in its start frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import os
import random
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from akcore.cgroups import Stops, WorkerGroups
from akcore.config import Settings, data_home, private_dir, worker_env
from autokitteh import _hide

log = logging.getLogger(__name__)

# Entries of the data home that workers read (Python environments, unpacked builds).
WORKER_DIRS = frozenset({"venv", "venvs", "runner"})
CROSSED_DIRS = frozenset({"venvs", "runner"})  # of those, the ones workers may not list
KILL_ROUNDS = 50  # scans of /proc; each kills what it finds, so a fork loop runs out of them


@dataclass(frozen=True)
class WorkerLimits:
    """What one worker process may use; set by the worker on itself (``autokitteh._worker``)."""

    memory_mb: int = 0  # its address space (RLIMIT_AS); 0 = no limit
    processes: int = 0  # processes of its user (RLIMIT_NPROC), only with a user of its own
    # a directory it does not see (``netfence.hidden``), only with a user of its own
    hidden: str = ""
    # the parent of its user id's control group (``WorkerGroups.parent``), which it joins
    # before it drops root; "" where the kernel does not keep its limits
    groups: str = ""
    # open files of each of its processes (RLIMIT_NOFILE); 0 = as the runner's. Every open
    # file takes a slot of the kernel's one table (``fs.file-max``), which every process of
    # the machine shares: the runner's own limit, times the processes a worker may have,
    # times the workers, would let one project's handlers fill it.
    files: int = 0
    # the temporary directories it gets of its own, in memory (``private_temps``;
    # ``os.pathsep`` between them), only with a user of its own; "": the machine's
    temp: str = ""

    def frame(self) -> dict[str, Any]:
        return {"memory_mb": self.memory_mb, "processes": self.processes, "files": self.files}


# Runs a command as a user id (argv[1]); started by a root runner with its own interpreter
# isolated (-I -S), so nothing of the command's environment runs as root. As a worker
# does (autokitteh._worker.become_user), it keeps no descriptor but stdio (uvloop's spawn
# leaves the runner's stdout and stderr open in a child), gains no privilege from what it
# runs (no_new_privs), connects to no abstract Unix socket made outside it (Landlock,
# Linux 6.12; nothing on older kernels) and gets temporary directories of its own in
# memory (argv[5]): a package's build script is anyone's code.
_AS_USER = """\
import ctypes, os, resource, runpy, sys
u, nproc, nofile, temp_mb = (int(x) for x in sys.argv[1].split(","))
os.closerange(3, 1 << 20)
boxing = runpy.run_path(sys.argv[2]) if sys.argv[3] != "-" or sys.argv[5] != "-" else {}
if sys.argv[3] != "-":
    boxing["hide"](sys.argv[3])
if sys.argv[5] != "-":
    boxing["private_temp"](sys.argv[5].split(os.pathsep), temp_mb)
for parent in sys.argv[4].split(os.pathsep) if sys.argv[4] != "-" else []:
    with open(os.path.join(parent, f"u{u}", "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
if nproc:
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
if nofile:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
os.setgroups([])
os.setresgid(u, u, u)
os.setresuid(u, u, u)
os.umask(0o022)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(38, 1, 0, 0, 0)
fd = libc.syscall(444, (ctypes.c_uint64 * 3)(0, 0, 1), 24, 0)
if fd >= 0:
    libc.syscall(446, fd, 0)
    os.close(fd)
os.execv(sys.argv[6], sys.argv[6:])
"""


def as_user(
    uid: int,
    argv: list[str],
    hidden: str = "",
    processes: int = 0,
    groups: str = "",
    files: int = 0,
    temp: str = "",
    temp_mb: int = 0,
) -> list[str]:
    """``argv`` run as user ``uid``, what it writes readable by others (a build tool),
    not seeing ``hidden`` (as a worker, ``netfence.hidden``), with at most ``processes``
    processes of that user at once (0: no limit), in its control group under ``groups``
    (``WorkerGroups.parent``; "": none), each process with at most ``files`` open files
    (0: as the runner's; a worker's ``WorkerLimits.files``, for the same reason), and
    the temporary directories ``temp`` (``private_temps``, ``os.pathsep`` between them)
    of its own, in memory, of at most ``temp_mb`` MiB each (0: the kernel's default)."""
    return [
        sys.executable,
        "-I",
        "-S",
        "-c",
        _AS_USER,
        f"{uid},{processes},{files},{temp_mb}",
        _hide.__file__,
        hidden or "-",
        groups or "-",
        temp or "-",
        *argv,
    ]


# The machine's temporary directories, every user's to write to, most often on the disk
# that also holds the data home, the database and NATS's store.
TEMP_DIRS = ("/tmp", "/var/tmp")


def private_temps(needed: dict[str, str]) -> tuple[list[str], str]:
    """The temporary directories (``TEMP_DIRS``, as real paths) sandboxed workers get of
    their own, in memory (``autokitteh._hide.private_temp``): those that hold nothing of
    ``needed`` (what workers read: the data home, their interpreter, the paths of their
    environment, by name), and why the others are left as they are ("": none is)."""
    found: list[str] = []
    why = []
    for folder in TEMP_DIRS:
        real = os.path.realpath(folder)
        if real in found or not os.path.isdir(real) or os.path.islink(real):
            continue
        under = real.rstrip("/") + "/"
        inside = [  # (a path as given, and where it leads: a venv's python is a link out)
            what
            for what, path in needed.items()
            if any(
                p == real or p.startswith(under)
                for p in (os.path.realpath(path), os.path.realpath(os.path.dirname(path)))
            )
        ]
        if inside:
            why.append(f"{real} holds {inside[0]}")
        else:
            found.append(real)
    return found, "; ".join(why)


def temp_dirs(settings: Settings) -> str:
    """The temporary directories sandboxed workers get of their own, in memory
    (``sandbox.private_temps``; ``os.pathsep`` between them), said once."""
    env = worker_env(dict(os.environ), settings.worker_env)
    python = shutil.which(settings.worker_python) or settings.worker_python or sys.executable
    needed = {
        "the data home": str(data_home()),
        "the interpreter": sys.executable,
        "the workers' interpreter": python,
    }
    for name, value in env.items():
        needed.update((f"{name}={p}", p) for p in value.split(os.pathsep) if p.startswith("/"))
    private, why = private_temps(needed)
    if private:
        log.info(
            "handlers get %s of their own, in memory (counted against their memory limit)",
            " and ".join(private),
        )
    if why:
        log.warning(
            "handlers share this host's temporary directory on its disk, which nothing "
            "bounds (a handler can fill the disk the data home is on): %s",
            why,
        )
    return os.pathsep.join(private)


# Mode bits a tree given back to root must not keep: what an installer made writable by
# others (any worker user could then change the venv) or set-id.
_LOOSE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH


def chown_tree(path: Path, uid: int) -> None:
    """Gives ``path`` and everything under it to ``uid`` (its group too), without ever
    following a link: the walk holds each directory open and works relative to it, so a
    directory swapped for a link while it walks leads nowhere. Given back to root (uid 0),
    nothing stays writable by others or set-id, and FIFOs, sockets and device nodes are
    removed (reading one would block or exhaust root); handed to another user, a file with
    other hard links is removed rather than given away."""
    back_to_root = uid == 0
    for _, _, files, dir_fd in os.fwalk(path, follow_symlinks=False):
        _own(dir_fd, uid, back_to_root)
        for name in files:  # (links, to directories too, are listed among the files)
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                os.chown(name, uid, uid, dir_fd=dir_fd, follow_symlinks=False)
            elif not stat.S_ISREG(info.st_mode) or (info.st_nlink > 1 and not back_to_root):
                # (a hard link: handed to the installer, it would hand over the file it is
                # linked to, wherever that is)
                os.unlink(name, dir_fd=dir_fd)
            else:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
                try:
                    _own(fd, uid, back_to_root)
                finally:
                    os.close(fd)


def _own(fd: int, uid: int, strip: bool) -> None:
    os.fchown(fd, uid, uid)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if strip and mode & _LOOSE_BITS:
        os.fchmod(fd, mode & ~_LOOSE_BITS)


def read_small(path: Path, limit: int = 65536) -> bytes:
    """A regular file's first ``limit`` bytes, read as root from a directory someone else
    may have written: a link is not followed, and a FIFO or device is not read (OSError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.read(fd, limit)
    finally:
        os.close(fd)


def is_root() -> bool:
    return os.geteuid() == 0


class UserIds:
    """User ids for worker processes, one per live process. A lock file per id (``flock``,
    dropped by the kernel when the runner dies) keeps the runners of one machine apart; an
    id is cleared of any process still running as it before it is handed out again. With
    ``groups``, each id handed out has control groups of its own, holding its processes
    to its memory limit (``akcore.cgroups``)."""

    def __init__(
        self,
        first: int,
        last: int,
        locks: Path,
        hidden: str = "",
        groups: WorkerGroups | None = None,
        temp: str = "",
    ) -> None:
        self.first, self.last, self._locks = first, last, locks
        self.hidden = hidden  # the directory their processes do not see (``netfence.hidden``)
        self.temp = temp  # the temporary directories they get of their own (``private_temps``)
        self.groups = groups
        self._held: dict[int, int] = {}  # uid -> its lock file's descriptor
        # Ids a System V segment of still holds (see ``_clear``): not handed out meanwhile.
        self._unclear: set[int] = set()
        self._giving: set[asyncio.Future[None]] = set()  # ids given back after a failed take

    @property
    def boxing(self) -> tuple[str, str, str]:
        """What boxes in a process of an id (a package install's, ``as_user``): the
        directory it does not see, where it finds its group, its temporary directories."""
        return self.hidden, self.groups_arg, self.temp

    @property
    def groups_arg(self) -> str:
        """Where a process of an id finds its group to join (``WorkerLimits.groups``): ""
        for none."""
        return self.groups.arg if self.groups is not None else ""

    def stops(self, uid: int, reset: bool = False) -> Stops:
        """What the kernel did at ``uid``'s memory limit so far (nothing without control
        groups; ``cgroups.WorkerGroups.stops``)."""
        return self.groups.stops(uid, reset) if self.groups is not None else Stops()

    async def take(self, memory_mb: int = 0) -> int:
        """A free user id, with no process left running as it and nothing of it left in the
        shared directories or among System V IPC objects (a runner that died could not
        clear them); with control groups, fresh ones limited to ``memory_mb`` (0: no
        limit)."""
        uid = await self._take()
        if self.groups is None:
            return uid
        making = asyncio.ensure_future(asyncio.to_thread(self.groups.make, uid, memory_mb << 20))
        try:
            await asyncio.shield(making)
        except BaseException:  # failed, or its taker cancelled: given back once it is over
            making.add_done_callback(lambda _: self._give_back_later(uid))
            raise
        return uid

    def _give_back_later(self, uid: int) -> None:
        task = asyncio.ensure_future(self.give_back(uid))
        self._giving.add(task)  # (held until done: a task nothing holds may be collected)
        task.add_done_callback(self._giving.discard)

    async def _take(self) -> int:
        if self._unclear:
            self._unclear &= _segment_users()
        while True:
            locking = asyncio.ensure_future(asyncio.to_thread(self._lock_one))
            try:
                uid = await asyncio.shield(locking)  # a cancelled taker leaves no id held
            except asyncio.CancelledError:
                locking.add_done_callback(self._release_abandoned)
                raise
            clearing = asyncio.ensure_future(asyncio.to_thread(_clear, uid))
            try:
                clear = await asyncio.shield(clearing)
            except BaseException:  # freed once the clear is over (it may kill what it finds)
                clearing.add_done_callback(functools.partial(self._release_cleared, uid))
                raise
            if clear:
                return uid
            log.warning(
                "user %d: a System V shared memory segment it made is still attached by "
                "another user's process; the id is not handed out until it goes",
                uid,
            )
            self._unclear.add(uid)
            self._release(uid)

    def _release_cleared(self, uid: int, clearing: asyncio.Future[bool]) -> None:
        if not clearing.cancelled() and clearing.exception() is not None:
            log.warning("user %d: clearing it failed: %s", uid, clearing.exception())
        self._release(uid)

    def _release_abandoned(self, locking: asyncio.Future[int]) -> None:
        if not locking.cancelled() and locking.exception() is None:
            self._release(locking.result())

    def _release(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)  # the lock goes with it

    def _lock_one(self) -> int:
        count = self.last - self.first + 1
        start = random.randrange(count)  # runners starting together rarely meet
        for i in range(count):
            uid = self.first + (start + i) % count
            if uid in self._held or uid in self._unclear:
                continue
            fd = self._try_lock(uid)
            if fd is None:
                continue
            self._held[uid] = fd
            return uid
        raise OSError(
            f"all {count} worker user ids are in use (AK_RUNNER__WORKER_UIDS is "
            f"{self.first}-{self.last}): give the runners a larger range"
        )

    def _try_lock(self, uid: int) -> int | None:
        """The descriptor holding ``uid``'s lock; None when another runner holds it."""
        fd = os.open(self._locks / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def sweep(self) -> list[int]:
        """Clears the ids of the range that run processes while no runner holds them: what
        the handlers of a runner that died left running (a process of theirs would run on
        beside the replay of its session); returns those ids. Once, as a runner starts."""
        found = sorted(
            {uid for pid in _pids() if self.first <= (uid := _real_uid(pid)) <= self.last}
        )
        cleared = []
        for uid in found:
            fd = self._try_lock(uid)
            if fd is None:  # a live runner's worker
                continue
            try:
                _clear(uid)
                cleared.append(uid)
            finally:
                os.close(fd)
        groups = self.groups
        if groups is not None:
            for uid in groups.leftovers():
                fd = self._try_lock(uid)
                if fd is None:  # a live runner's worker's
                    continue
                try:
                    groups.remove(uid)
                finally:
                    os.close(fd)
        return cleared

    async def give_back(self, uid: int) -> None:
        """Kills whatever still runs as ``uid`` (what a handler left behind), removes its
        files from the directories every user may write to (``SHARED_TEMP``, the POSIX
        message queues), its System V shared memory, semaphores and message queues and
        its control groups, then frees it: the next worker given the id, maybe another
        project's, finds nothing of this one. A caller cancelled meanwhile (its session
        stopped as its worker ended) does not keep the id held: it is freed once cleared."""
        clearing = asyncio.ensure_future(asyncio.to_thread(self._clear_all, uid))
        clearing.add_done_callback(functools.partial(self._release_cleared, uid))
        await asyncio.shield(clearing)

    def _clear_all(self, uid: int) -> bool:
        clear = _clear(uid)
        if self.groups is not None:
            self.groups.remove(uid)
        return clear


# The machine's directories every user may write to: the temporary ones, the lock directory
# (/var/lock is most often a link to /run/lock, and a link is not followed: either is
# cleared where it is a directory), and where POSIX message queues are listed
# (``mqueue_dir``).
SHARED_TEMP = (
    Path("/tmp"),
    Path("/var/tmp"),
    Path("/dev/shm"),
    Path("/run/lock"),
    Path("/var/lock"),
)
SHARED_DEPTH = 8  # how deep the clear looks into others' world-writable directories


def _clear(uid: int) -> bool:
    """Kills what runs as ``uid`` and removes what it left (``give_back``); whether nothing
    of it is left: a System V segment removed while a process of another user still has
    it attached lives on, its creator's, until that one detaches (a worker given the id
    meanwhile could attach it again by its id, and would be charged with it)."""
    kill_user(uid)
    remove_files_of(uid, (*SHARED_TEMP, *filter(None, [mqueue_dir()])))
    remove_ipc_of(uid)
    return uid not in _segment_users()


def _segment_users() -> set[int]:
    """The user ids that made or own a System V shared memory segment that exists."""
    return {seg[k] for seg in sysv_objects("shm") for k in ("uid", "cuid") if k in seg}


def remove_files_of(uid: int, roots: tuple[Path, ...] = SHARED_TEMP) -> int:
    """Removes what user ``uid`` owns in ``roots`` (files, and directories with all they
    hold), never following a link; returns how many entries it removed. Below the top it
    looks only into directories of others that every user may write to (``/tmp/.X11-unix``):
    a directory the user owns goes whole, and it can write to no other. Its processes must
    be gone first (``kill_user``)."""
    removed = 0
    for root in roots:
        try:
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            removed += _remove_in(root_fd, root, uid, SHARED_DEPTH)
        finally:
            os.close(root_fd)
    return removed


def _remove_in(dir_fd: int, where: Path, uid: int, depth: int) -> int:
    removed = 0
    for name in os.listdir(dir_fd):
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if info.st_uid != uid:
                if depth > 0 and stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                    try:
                        removed += _remove_in(fd, where / name, uid, depth - 1)
                    finally:
                        os.close(fd)
                continue
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("could not remove %s/%s of user %d: %s", where, name, uid, e)
    return removed


_MQUEUE_OWN = Path("/run/autokitteh/mqueue")  # where a root runner mounts one if none is
_mqueue: list[Path | None] = []  # found once: [the directory, or None]
_mqueue_lock = threading.Lock()  # (ids are cleared in threads)


def mqueue_dir() -> Path | None:
    """A directory listing the machine's POSIX message queues (an ``mqueue`` file system:
    every mount of it shows the same queues), to remove a user's as its files: the first
    mount of it, or one a root runner makes at ``/run/autokitteh/mqueue``; None, said once
    in the log, when there is none and none can be made."""
    with _mqueue_lock:
        if not _mqueue:
            _mqueue.append(_find_mqueue())
        return _mqueue[0]


def _find_mqueue() -> Path | None:
    try:
        with open("/proc/self/mounts", "rb") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == b"mqueue":
                    return Path(os.fsdecode(fields[1]).replace("\\040", " "))
    except OSError:
        pass
    if not is_root():
        return None
    import ctypes

    try:
        _MQUEUE_OWN.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _libc().mount(b"mqueue", bytes(_MQUEUE_OWN), b"mqueue", 0, None) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except OSError as e:
        log.warning(
            "no mqueue file system to find POSIX message queues a worker left (%s): "
            "mount one (mount -t mqueue none /dev/mqueue) for them to be removed",
            e,
        )
        return None
    log.info(
        "mounted an mqueue file system at %s to find POSIX message queues workers leave",
        _MQUEUE_OWN,
    )
    return _MQUEUE_OWN


@functools.cache
def _libc() -> Any:
    """The C library, for the calls Python's ``os`` lacks (``mount``, ``shmctl``, ...)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


# --- System V IPC: shared memory segments, semaphore sets and message queues live on after
# the processes that made them, until removed (IPC_RMID) or the machine restarts.

_IPC_RMID = 0
_SYSV_KINDS = {"shm": "shmid", "sem": "semid", "msg": "msqid"}  # each kind's id column


def sysv_objects(kind: str) -> list[dict[str, int]]:
    """The machine's System V IPC objects of ``kind`` (shm, sem or msg), each a row of
    ``/proc/sysvipc/<kind>`` by its column names (``shmid``/``semid``/``msqid``, ``uid``
    the owner's, ``cuid`` the creator's, ...); none where they cannot be read."""
    try:
        with open(f"/proc/sysvipc/{kind}", "rb") as f:
            head, *rows = f.read().splitlines()
    except (OSError, ValueError):
        return []
    names = [n.decode() for n in head.split()]
    found = []
    for row in rows:
        try:
            found.append(dict(zip(names, map(int, row.split()), strict=True)))
        except ValueError:
            continue
    return found


def remove_ipc_of(uid: int) -> int:
    """Removes every System V shared memory segment, semaphore set and message queue that
    user ``uid`` created or owns (an owner may hand its object to any user id, not its
    creator); returns how many it removed. A segment still attached goes once the last
    process detaches: the user's processes must be gone first (``kill_user``)."""
    import ctypes

    libc = _libc()
    removed = 0
    for kind, obj in sysv_objects_of(uid):
        ident = _SYSV_KINDS[kind]
        if ident not in obj:
            continue
        # semctl(id, semnum, cmd); shmctl and msgctl (id, cmd, buf)
        args = (0, _IPC_RMID) if kind == "sem" else (_IPC_RMID, None)
        if getattr(libc, f"{kind}ctl")(obj[ident], *args) == 0:
            removed += 1
        elif (err := ctypes.get_errno()) not in (errno.EINVAL, errno.EIDRM):  # gone
            log.warning(
                "could not remove %s %d of user %d: %s", kind, obj[ident], uid, os.strerror(err)
            )
    return removed


def sysv_objects_of(uid: int) -> list[tuple[str, dict[str, int]]]:
    """The System V IPC objects user ``uid`` made or owns, each with its kind."""
    return [
        (kind, obj)
        for kind in _SYSV_KINDS
        for obj in sysv_objects(kind)
        if uid in (obj.get("uid"), obj.get("cuid"))
    ]


def sysv_memory_by_creator(uids: Collection[int]) -> dict[int, int]:
    """The memory (bytes) the System V shared memory segments and message queues each of
    ``uids`` created hold, attached or not: a segment's resident and swapped pages (its
    size where the kernel shows neither), a queue's messages. By creator, not owner: an
    owner can hand its object to another user id, but never charge it with it."""
    used = dict.fromkeys(uids, 0)
    for seg in sysv_objects("shm"):
        if seg.get("cuid") in used:
            held = seg["rss"] + seg["swap"] if "rss" in seg and "swap" in seg else seg["size"]
            used[seg["cuid"]] += held
    for queue in sysv_objects("msg"):
        if queue.get("cuid") in used:
            used[queue["cuid"]] += queue.get("cbytes", 0)
    return used


def kill_user(uid: int) -> int:
    """SIGKILLs every process of user ``uid``, all at once (``_kill_all_at_once``), then
    any still seen alive, until none is left; returns how many there were. Seen in
    ``/proc/<pid>/status``, which a process cannot hide from (its ``/proc`` directory's
    owner it can, by becoming non-dumpable). A scan alone could be outrun: a process that
    forks and exits in a loop has a child the scan did not list by the time it is killed."""
    if uid <= 0:  # (root's: everything; a worker's id is never 0)
        raise ValueError(f"not a worker's user id: {uid}")
    there = sum(1 for pid in _pids() if _real_uid(pid) == uid)
    _kill_all_at_once(uid)
    for _ in range(KILL_ROUNDS):  # (dying ones, which the signal has not ended yet)
        found = [pid for pid in _pids() if _real_uid(pid) == uid]
        if not found:
            return there
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    log.warning("user %d: processes still running after %d rounds of kills", uid, KILL_ROUNDS)
    return there


# The real and saved user ids of the processes ``_kill_all_at_once`` makes count down from
# here, one for each worker id (``killer_uid``): ids nothing runs as.
KILLER_TOP = 4294967293  # (2**32 - 1 is no id: it means "unchanged" to setresuid)


def killer_uid(uid: int) -> int:
    """The real and saved user id of ``_kill_all_at_once``'s process for worker id ``uid``:
    one of its own, so that neither the user's processes nor the killer of another worker
    id (another runner's, at the same moment) may signal it, as they could one with their
    own real id or with a real id every killer shared. Above every worker id (they are
    below ``config.MAX_WORKER_UID``)."""
    return KILLER_TOP - uid


def _kill_all_at_once(uid: int) -> None:
    """SIGKILLs every process of ``uid`` in one step: a child of this (root) process with
    ``uid`` as its effective user id signals every process it may (``kill(-1)``), which the
    kernel does holding the process list, so a process forking meanwhile cannot slip past
    (its fork fails with the signal pending). Its real and saved ids are ``killer_uid``'s.
    Where that id cannot be taken (a user namespace without it), the scans that follow
    are all there is."""
    killer = killer_uid(uid)
    pid = os.fork()
    if pid == 0:  # (only system calls here: this process may have had other threads)
        try:
            os.setresuid(killer, uid, killer)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def children(pid: int) -> set[int]:
    """The children of process ``pid`` (ended ones it has not waited for too), from the
    ``children`` lists of its threads; OSError when those cannot be read (a kernel without
    them, or the process gone)."""
    tids = os.listdir(f"/proc/{pid}/task")
    if not tids:
        raise ProcessLookupError(pid)
    found: set[int] = set()
    for tid in tids:
        with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
            found.update(int(child) for child in f.read().split())
    return found


def has_children(pid: int) -> bool:
    """Whether process ``pid`` has children; True when it cannot be told, so that a caller
    falls back to scanning ``/proc``."""
    try:
        return bool(children(pid))
    except OSError:
        return True


def has_strangers(pid: int, known: Collection[int]) -> bool:
    """Whether the parent of process ``pid`` has a child not in ``known`` (its forks): a
    process a handler made the parent's child (``clone(CLONE_PARENT)``) is no child of its
    worker. True when it cannot be told, so that a caller scans ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            parent = int(f.read().rsplit(b")", 1)[1].split()[1])
        return not children(parent) <= set(known)
    except (OSError, ValueError, IndexError):
        return True


def resident_by_user(uids: Collection[int]) -> dict[int, int]:
    """The memory (bytes) each of ``uids`` uses: all its processes together, by their
    proportional set sizes, so that pages forked children share count once, not once per
    process (their resident sizes where the kernel shows no ``smaps_rollup``); and the
    System V shared memory and message queues it made, which outlive its processes
    (``sysv_memory_by_creator``). A segment's pages that a process of the user has mapped
    count twice, in both: they cannot be told apart from other shared pages in a
    process's sum, and counting them once would let memory out of the count."""
    used = sysv_memory_by_creator(uids)
    for pid in _pids():
        uid = _real_uid(pid)
        if uid in used:
            used[uid] += _memory_of(pid)
    return used


def session_pids(sid: int) -> list[int]:
    """The processes of session ``sid``."""
    found = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and fields[3] == str(sid).encode():  # (state, ppid, pgrp, sid)
            found.append(pid)
    return found


def resident_of_session(sid: int) -> int:
    """The memory (bytes) the processes of session ``sid`` use together (as
    ``resident_by_user`` counts a process): what a tool started in a session of its own
    runs, when it has no user of its own to be counted by."""
    return sum(_memory_of(pid) for pid in session_pids(sid))


def kill_session(sid: int) -> None:
    """Kills every process of session ``sid``, whatever process group it is in (a round
    more for what they forked meanwhile)."""
    for _ in range(3):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _memory_of(pid: int) -> int:
    for name, field in (("smaps_rollup", b"Pss:"), ("status", b"VmRSS:")):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                for line in f:
                    if line.startswith(field):
                        return int(line.split()[1]) * 1024  # kB
        except (OSError, ValueError, IndexError):
            continue
    return 0


class MemoryWatch:
    """Holds each sandboxed worker to its memory limit for all of its processes together
    (the address-space limit a worker sets bounds each process alone) and the System V
    memory it made: twice a second, one scan of ``/proc`` sums what every watched user uses
    (``resident_by_user``), and a user over its limit gets its callback once, told what
    went over. With control groups (``users.groups``), where the kernel holds them to the
    limit at every allocation, a process of theirs the kernel killed there counts as over
    too, and is all that counts: the kernel charges each page once, to the group that
    first used it, where the sum of processes' proportional sizes also counts pages of
    shared libraries another group brought in, and so can pass the limit while the group
    is under it (a session ended over a limit it never reached). Scans run only while a
    worker is watched."""

    INTERVAL = 0.5

    def __init__(self, users: UserIds | None = None) -> None:
        self.users = users
        # uid -> (limit, what the kernel had done at its limit when watched, callback)
        self._watched: dict[int, tuple[int, Stops, Callable[[str], None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def stops(self, uid: int, reset: bool = False) -> Stops:
        """What the kernel did at ``uid``'s memory limit so far (``cgroups.Stops``)."""
        return self.users.stops(uid, reset) if self.users is not None and uid >= 0 else Stops()

    def watch(
        self, uid: int, limit: int, over: Callable[[str], None], since: Stops | None = None
    ) -> None:
        """Calls ``over(what went over)`` once if ``uid``'s processes use more than
        ``limit``, or the kernel kills one of them at it, from now on (or since ``since``,
        what ``stops`` said a moment ago)."""
        self._watched[uid] = (limit, self.stops(uid) if since is None else since, over)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def unwatch(self, uid: int) -> None:
        self._watched.pop(uid, None)

    async def _run(self) -> None:
        while self._watched:
            await asyncio.sleep(self.INTERVAL)
            found = await asyncio.to_thread(self._look, dict(self._watched))
            for uid, what in found.items():
                watched = self._watched.pop(uid, None)
                if watched is not None:
                    watched[2](what)

    def _look(self, watched: dict[int, tuple[int, Stops, Callable[[str], None]]]) -> dict[int, str]:
        """The watched users over their limits, each with what went over (in a thread)."""
        if self.users is not None and self.users.groups is not None:
            return {
                uid: KERNEL_STOPPED
                for uid, (_, before, _) in watched.items()
                if self.stops(uid).over_since(before)
            }
        found = {}
        for uid, used in resident_by_user(list(watched)).items():
            if used > watched[uid][0]:
                found[uid] = f"its processes and System V memory used {used >> 20} MiB together"
        return found

    async def close(self) -> None:
        self._watched.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# What went over, when the kernel stopped a process at a user id's memory limit (``cgroups``).
KERNEL_STOPPED = "the kernel stopped a process of it there"


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _real_uid(pid: int) -> int:
    """The real user id of a live process (-1 for one gone, or a zombie: dead already).
    A process whose main thread exited while another one runs shows as a zombie too, with
    more than one thread: it is alive (and SIGKILL to it ends them all)."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY)
        try:
            head = os.read(fd, 4096)  # State comes before Uid, both in the first lines
        finally:
            os.close(fd)
        state = head.index(b"\nState:") + 7
        if head[state : state + 3].split()[0] in (b"Z", b"X") and _threads(head) <= 1:
            return -1
        uid = head.index(b"\nUid:") + 5
        return int(head[uid : head.index(b"\n", uid)].split()[0])
    except (OSError, ValueError, IndexError):
        return -1


def _threads(status: bytes) -> int:
    """The ``Threads:`` of a ``/proc/<pid>/status`` (a zombie's is short: it has no memory
    lines before it); 0 when it is not there."""
    at = status.find(b"\nThreads:")
    if at < 0:
        return 0
    try:
        return int(status[at + 9 : status.index(b"\n", at + 9)])
    except ValueError:
        return 0


def lock_dir() -> Path:
    """Where the runners of this machine hold their user ids: a directory only root can
    write to (a worker must not be able to make it first)."""
    path = Path("/run/autokitteh/worker-uids")
    try:
        return private_dir(path)  # (the runner is root: root's)
    except OSError as e:
        raise OSError(f"the worker sandbox needs {path}: {e}{_OFF}") from None


_OFF = " (or set AK_RUNNER__SANDBOX=off to run handlers as the runner's user)"


def seal_data_home(data: Path) -> None:
    """Closes the data home to worker users: only ``WORKER_DIRS`` are theirs to read, the
    home itself can be crossed but not listed, and the directories above it can be crossed
    (``o+x``, said once in the log when that had to be added)."""
    runner = data / "runner"
    for name in ("builds", "spare", "sdk"):
        (runner / name).mkdir(parents=True, exist_ok=True)
    data.chmod(0o711)
    for entry in data.iterdir():
        if entry.is_symlink():
            continue
        mode = stat.S_IMODE(entry.stat().st_mode)
        if entry.name in WORKER_DIRS:  # (crossed, never listed: "runner", "venvs")
            entry.chmod(mode | 0o055 if entry.name not in CROSSED_DIRS else 0o711)
        elif mode & 0o077:
            entry.chmod(mode & ~0o077)
    for name, mode in (("builds", 0o711), ("spare", 0o711), ("sdk", 0o755)):
        (runner / name).chmod(mode)
    open_way_to(data)


def open_way_to(path: Path) -> None:
    """Makes the directories above ``path`` searchable by other users (``o+x``: a name in
    them can be opened if its own mode allows, none can be listed), saying so in the log
    for each that was not. Workers must reach their interpreter and the data home, and
    a root runner's often live under /root."""
    for parent in path.resolve().parents:
        mode = stat.S_IMODE(parent.stat().st_mode)
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
            log.warning(
                "made %s searchable by other users (o+x, not listable) so that sandboxed "
                "workers reach %s",
                parent,
                path,
            )
