"""A process whose main thread has exited while another thread runs shows as a zombie in
``/proc/<pid>/status`` (``State: Z``, ``Threads: 2``): ``kill_user`` must take it for
what it is, a live process of the user, or it outlives its session and its user id is
handed to the next worker, maybe another project's, with it running as that id."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ak_runner.sandbox import UserIds, kill_user

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
