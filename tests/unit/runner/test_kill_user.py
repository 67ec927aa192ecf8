"""``kill_user`` leaves no process of the user running, or it outlives its session and its
user id is handed to the next worker, maybe another project's, with it running as that id:
not one whose main thread has exited while another thread runs (it shows as a zombie in
``/proc/<pid>/status``: ``State: Z``, ``Threads: 2``), nor one that forks and exits in a
loop (a scan of ``/proc`` lists a pid that is gone by the time its status is read, and
not the child it forked meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ak_runner import sandbox
from ak_runner.sandbox import UserIds, kill_user
from akcore import config

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs a process as another user id"),
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="the exit syscall's number"),
]

UID = 779993  # outside the runners' default range

LEADERLESS = (
    "import ctypes, os, threading, time\n"
    "threading.Thread(target=time.sleep, args=(1000,)).start()\n"
    "os.write(1, b'x')\n"
    "ctypes.CDLL(None).syscall(60, 0)\n"  # exit(2): the main thread alone ends
)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _runs(pid: int) -> bool:
    """Whether any thread of ``pid`` still runs (a zombie not yet waited for does not)."""
    status = _status(pid)
    return not status["State"].startswith("Z") or int(status["Threads"]) > 1


@pytest.fixture
def leaderless() -> Iterator[int]:
    """A process of ``UID`` whose leader has exited, its other thread sleeping."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        os.setsid()
        os.setgid(UID)
        os.setuid(UID)
        os.execv(sys.executable, [sys.executable, "-c", LEADERLESS])
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    try:
        while not _status(pid)["State"].startswith("Z"):  # the leader's exit, as /proc says
            os.sched_yield()
        assert _runs(pid)
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_kill_user_kills_a_process_whose_leader_exited(leaderless: int) -> None:
    assert kill_user(UID) >= 1  # (again while its threads were still going)
    assert not _runs(leaderless)


def test_an_id_given_back_keeps_no_such_process(leaderless: int, tmp_path: Path) -> None:
    """Without control groups (a cgroup v2 machine): giving the id back clears it."""

    async def give_back() -> None:
        await UserIds(UID, UID, tmp_path, groups=None).give_back(UID)

    asyncio.run(give_back())
    assert not _runs(leaderless)


# Forks on each byte it reads: the child says its pid and goes on, the parent exits.
HOPPER = (
    "import os, sys\n"
    "ctl, rep = int(sys.argv[1]), int(sys.argv[2])\n"
    "while os.read(ctl, 1):\n"
    "    if os.fork():\n"
    "        os._exit(0)\n"
    "    os.write(rep, b'%d\\n' % os.getpid())\n"
)


class Hopper:
    """A process of ``UID`` that forks and exits whenever told (``hop``)."""

    def __init__(self) -> None:
        ctl, self.ctl = os.pipe()
        self.said, said = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.set_inheritable(ctl, True)
            os.set_inheritable(said, True)
            os.setsid()
            os.setresgid(UID, UID, UID)
            os.setresuid(UID, UID, UID)
            os.execv(sys.executable, [sys.executable, "-c", HOPPER, str(ctl), str(said)])
        os.close(ctl)
        os.close(said)
        self.pid = self.first = pid

    def hop(self) -> int | None:
        """Its new pid, once the old one has exited; None when it is gone."""
        try:
            os.write(self.ctl, b"h")
        except BrokenPipeError:
            return None
        line = b""
        while not line.endswith(b"\n"):
            assert select.select([self.said], [], [], 10)[0], "the hopper did not answer"
            if not (part := os.read(self.said, 1)):
                return None
            line += part
        old, self.pid = self.pid, int(line)
        while _running(old):
            os.sched_yield()
        return self.pid

    def close(self) -> None:
        """Ends it (if it runs: at the end of its control pipe) and waits until it has."""
        with contextlib.suppress(OSError):
            os.close(self.ctl)  # (it ends at EOF, if still there)
        while os.read(self.said, 4096):  # EOF: none of its processes holds the pipe
            pass
        os.close(self.said)
        os.waitpid(self.first, 0)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


@pytest.fixture
def hopper(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hopper]:
    """The hopper, made to fork and exit each time a scan of /proc has listed it and is
    about to read its status (it does so all the time when it loops on its own)."""
    h = Hopper()
    real = sandbox._real_uid

    def hopping(pid: int) -> int:
        if pid == h.pid:
            h.hop()
        return real(pid)

    monkeypatch.setattr(sandbox, "_real_uid", hopping)
    try:
        yield h
    finally:
        monkeypatch.undo()
        h.close()


def test_kill_user_kills_a_process_that_forks_and_exits(hopper: Hopper) -> None:
    kill_user(UID)
    assert hopper.hop() is None, "a process of the user runs on"


def test_an_id_given_back_and_taken_again_runs_nothing(hopper: Hopper, tmp_path: Path) -> None:
    async def give_back_and_take() -> int:
        users = UserIds(UID, UID, tmp_path, groups=None)
        await users.give_back(UID)
        return await users.take()

    assert asyncio.run(give_back_and_take()) == UID
    assert hopper.hop() is None, "the id was handed out with a process of the last one's"


def test_a_kill_spares_another_ids_killer() -> None:
    """Two runners killing two users at the same moment: neither killer may kill the other
    (with one real id for every killer, each could, and the other user's processes were
    left to the scans a hopper outruns). Here the other killer is a process with the ids
    ``kill_user`` gives the killer of another id, waiting."""
    other = 779997  # (no other test uses it: one killing it would kill this process)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.setresuid(sandbox.killer_uid(other), other, sandbox.killer_uid(other))
        os.read(r, 1)  # (until the test ends)
        os._exit(0)
    os.close(r)
    try:
        assert kill_user(UID) == 0
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # alive
        assert sandbox.killer_uid(UID) > config.MAX_WORKER_UID
    finally:
        os.close(w)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # it ended by itself, not by SIGKILL


def test_root_is_never_the_user_killed() -> None:
    with pytest.raises(ValueError):
        kill_user(0)
