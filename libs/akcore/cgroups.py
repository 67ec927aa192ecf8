"""The memory limit the kernel keeps, a control group per worker user id.

A root runner whose machine has cgroup v1's ``memory`` controller mounted writable makes a
group ``u<uid>`` for each user id it hands out (a worker's, a package builder's), under
``autokitteh-workers`` in its own memory group, with the id's memory limit
(``memory.limit_in_bytes``, and swap with it where the kernel counts swap); processes
are bounded per user id already (``RLIMIT_NPROC``). The process given the id joins its
group itself before it drops root (``autokitteh._worker.join_groups``), so everything it
starts is in it, whatever user, process group or session it moves to. The kernel then
holds all of them together to the limit at every allocation: files in ``/dev/shm`` and
other memory file systems, System V memory and page tables count too, which the runner's
twice-a-second count (``sandbox.MemoryWatch``) sees only in part and after the fact. At the limit
the kernel stops the largest process of the group (an out-of-memory kill), which the
runner reads in the group's ``memory.oom_control`` to end the session with the limit's
message.

Where there is no such controller (cgroup v2 alone, a container without it, a runner that
is not root), the runner says so once in its log and counts memory as before.

Where cgroup v1's ``cpu`` controller is mounted writable too, each user id also gets a group
``u<uid>`` under ``autokitteh-workers`` in the runner's cpu group, which its process joins
with the memory one: all the processes of a worker share one scheduling group, so that a
handler cannot take more of the CPU than another worker by starting many processes, each in
a session of its own (the kernel's autogroup gives every session of the root group a share
as large as all the services together). The workers' groups together share one group of
the default weight, beside the runner's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

PARENT = "autokitteh-workers"  # the runner's groups, in its own memory group
KILL_ROUNDS = 50  # reads of a group's processes; each kills what it finds


def _mount(controller: str = "memory") -> tuple[Path, str] | None:
    """Where cgroup v1's ``controller`` is mounted, and the group mounted there (``/`` but
    in a container showing the host's tree from a group down); None without one."""
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            pre, _, post = line.decode(errors="replace").partition(" - ")
            fields, tail = pre.split(), post.split()
            if len(fields) >= 5 and len(tail) >= 3 and tail[0] == "cgroup":
                if controller in tail[2].split(","):
                    return Path(_unescape(fields[4])), _unescape(fields[3])
    return None


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")


def _own_group(controller: str = "memory") -> str | None:
    """The runner's group of cgroup v1's ``controller`` (``/proc/self/cgroup``)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    return None


def _parent_in(controller: str) -> Path | None:
    """``autokitteh-workers`` in the runner's group of ``controller`` (its path; not made),
    or None when that controller is not mounted."""
    mounted, path = _mount(controller), _own_group(controller)
    if mounted is None or path is None:
        return None
    mount, root = mounted
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root.rstrip("/")) :]  # (a mount of a group, not the tree)
    return mount / path.lstrip("/") / PARENT


def _cpu_parent() -> Path | None:
    """The workers' cpu groups' parent, made (with the default weight), or None where
    cgroup v1's cpu controller is not mounted writable: workers then share the CPU as
    their processes and sessions do."""
    try:
        parent = _parent_in("cpu")
        if parent is None:
            return None
        parent.mkdir(mode=0o755, exist_ok=True)
        probe = parent / f"probe-{os.getpid()}"
        try:
            probe.mkdir(mode=0o700)
        finally:
            _rmdir(probe)
    except OSError as e:
        log.warning("workers share no cpu control group (each process its own share): %s", e)
        return None
    return parent


class WorkerGroups:
    """The runner's memory groups, one per user id it hands out, under ``parent``; and its
    cpu groups under ``cpu`` where there is that controller."""

    def __init__(self, parent: Path, cpu: Path | None = None) -> None:
        self.parent = parent  # this runner's ``autokitteh-workers``
        self.cpu = cpu  # and in the cpu controller's tree, if any

    @property
    def parents(self) -> list[Path]:
        """Where a user id's groups are (``u<uid>`` in each), the memory controller's first
        (one where the two controllers are mounted together: one hierarchy, one group)."""
        return [self.parent, *([self.cpu] if self.cpu not in (None, self.parent) else [])]

    @property
    def arg(self) -> str:
        """The parents, as a process joining its groups is told them (``os.pathsep``
        between them: ``autokitteh._worker.join_groups``)."""
        return os.pathsep.join(map(str, self.parents))

    @classmethod
    def find(cls) -> tuple[WorkerGroups | None, str]:
        """The groups, made ready (their parent made); or None and why not, for the log."""
        if os.geteuid() != 0:
            return None, "the runner is not root"
        try:
            parent = _parent_in("memory")
        except OSError as e:
            return None, f"cannot read this process's control groups: {e}"
        if parent is None:
            return None, "no cgroup v1 memory controller mounted (cgroup v2 is not used yet)"
        try:
            parent.mkdir(mode=0o755, exist_ok=True)
            with contextlib.suppress(OSError):  # (one with children refuses it)
                (parent / "memory.use_hierarchy").write_text("1")
            if (parent / "memory.use_hierarchy").read_text().strip() != "1":
                return None, f"{parent} does not count its groups' memory in its own"
        except OSError as e:
            return None, f"cannot make {parent}: {e.strerror or e}"
        # A group must be made, not only the parent found (one an earlier runner left on a
        # file system now read-only): one of this process's own, made and removed.
        probe = parent / f"probe-{os.getpid()}"
        try:
            probe.mkdir(mode=0o700)
            (probe / "memory.limit_in_bytes").write_text(str(1 << 30))
        except OSError as e:
            return None, f"cannot make a control group in {parent}: {e.strerror or e}"
        finally:
            _rmdir(probe)
        return cls(parent, _cpu_parent()), ""

    def _group(self, uid: int) -> Path:
        return self.parent / f"u{uid}"

    def make(self, uid: int, memory: int) -> None:
        """A fresh group for ``uid`` (what an earlier one held is killed, and the group
        removed; a parent removed meanwhile is made again), limited to ``memory`` bytes (0:
        none), its socket buffers included. Only root may look into it (its processes,
        their memory: ``hidepid`` hides them from other workers).

        Raises:
            GroupError: naming the group and why it could not be made.
        """
        self.remove(uid)
        group = self._group(uid)
        try:
            for parent in self.parents:
                parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                (parent / group.name).mkdir(mode=0o700)
            if memory > 0:
                (group / "memory.limit_in_bytes").write_text(str(memory))
                # Swap, and the TCP buffers of its sockets, which v1 counts only in a group
                # given a limit of them (a peer that never reads holds what was sent).
                for extra in ("memory.memsw.limit_in_bytes", "memory.kmem.tcp.limit_in_bytes"):
                    with contextlib.suppress(FileNotFoundError):  # (a kernel without it)
                        (group / extra).write_text(str(memory))
        except OSError as e:
            raise GroupError(
                f"cannot make the control group {group} for a worker: {e.strerror or e}"
            ) from None

    def stops(self, uid: int, reset: bool = False) -> Stops:
        """What the kernel did at ``uid``'s memory limit so far (``Stops``); ``reset``:
        its high-water mark starts again from what it holds now (a session starts).

        Read at each session's start and end and twice a second while it runs: one file
        when the kernel killed nothing in the group (almost always), as a group without a
        kill is never over its limit (``Stops.over_since``) whatever its high-water mark.
        (Opening a control group's file costs the kernel more than most reads: three
        reads, a write and a second look at the start were a seventh of the runner's
        CPU in a closed loop of trivial sessions.)"""
        memory = f"{self._group(uid)}/"
        kills, peaked = 0, False
        with contextlib.suppress(OSError, ValueError):
            for line in _read(memory + "memory.oom_control").splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    kills = int(value)
            if kills:
                limit = int(_read(memory + "memory.limit_in_bytes"))
                high = int(_read(memory + "memory.max_usage_in_bytes"))
                peaked = high >= limit - PEAK_SLACK
            if reset:
                _write(memory + "memory.max_usage_in_bytes", b"0")
        return Stops(kills, peaked)

    def processes(self, uid: int) -> list[int] | None:
        """The processes in ``uid``'s group (None when it cannot be read): whatever a
        worker started, however it left its parent, process group or session, until it
        ends (the group is root's: nothing in it can move out)."""
        return _procs(self._group(uid))

    def remove(self, uid: int) -> None:
        """Kills every process in ``uid``'s group and removes it, and its cpu group (none
        there: nothing)."""
        group = self._group(uid)
        if not group.is_dir():
            if self.cpu is not None:
                _rmdir(self.cpu / group.name)
            return
        for _ in range(KILL_ROUNDS):
            pids = _procs(group)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _rmdir(group)
        if self.cpu is not None:  # (its processes are the memory group's: gone)
            _rmdir(self.cpu / group.name)

    def leftovers(self) -> list[int]:
        """The user ids that have a group (a runner that died could not remove its)."""
        found: set[int] = set()
        for parent in self.parents:
            with contextlib.suppress(OSError):
                found.update(
                    int(entry.name[1:])
                    for entry in parent.iterdir()
                    if entry.name.startswith("u") and entry.name[1:].isdigit()
                )
        return sorted(found)


class GroupError(OSError):
    """A worker's control group could not be made."""


# How far under its limit a group's high-water mark may stay and still count as having
# reached it (the kernel charges pages in batches).
PEAK_SLACK = 1 << 20


class Stops(NamedTuple):
    """A group's processes the kernel killed for want of memory (for the group's own
    limit, a parent group's, or the machine's), and whether what it held reached its own
    limit since its high-water mark was last reset (looked at only after a kill)."""

    kills: int = 0
    peaked: bool = False

    def over_since(self, before: Stops) -> bool:
        """Whether the kernel killed a process of the group at the group's own limit since
        ``before``: a kill, with the group at its limit (one for a parent group's limit, or
        the machine's, finds it under its own)."""
        return self.kills > before.kills and self.peaked


def _read(path: str) -> str:
    """A control group file's text (without pathlib's and io's layers)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _procs(group: Path) -> list[int] | None:
    try:
        return [int(x) for x in _read(f"{group}/cgroup.procs").split()]
    except (OSError, ValueError):
        return None


def _rmdir(group: Path) -> None:
    """Removes an emptied group: a killed process leaves it only once the kernel is done
    with it, a moment after the kill."""
    for attempt in range(100):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == 99:
                log.warning("could not remove the control group %s: %s", group, e)
                return
            time.sleep(0.01)
