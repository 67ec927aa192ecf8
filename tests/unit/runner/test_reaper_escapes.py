"""A handler's process that leaves the worker's children without turning its
PR_SET_CHILD_SUBREAPER off: made the worker's sibling (``clone(CLONE_PARENT)``), it is a
child of the worker's parent that the parent did not fork, which ``has_strangers`` finds
(services/runner/worker.py then kills what the worker's user left)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ak_runner.sandbox import has_children, has_strangers, kill_user

from .test_sandbox import _marked, python_for_all, root_only  # noqa: F401

_CLONE_PARENT = """
import ctypes, os, signal, sys
from autokitteh import _worker
_worker.become_user(int(sys.argv[1]))
sys.stdin.readline()
libc = ctypes.CDLL(None, use_errno=True)
CLONE_PARENT = 0x00008000
pid = libc.syscall(56, CLONE_PARENT | signal.SIGCHLD, 0, 0, 0, 0)  # x86_64 clone
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
print("littered", pid, flush=True)
sys.stdin.readline()
"""


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out |= {int(c) for c in f.read().split()}
    return out


@root_only
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the clone syscall's number")
def test_a_process_cloned_as_the_workers_sibling_is_still_seen_as_left_over(
    python_for_all: None,  # noqa: F811
) -> None:
    uid = 829996
    mark = f"ak-sibling-{os.getpid()}"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", mark]
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLONE_PARENT, str(uid), *sleeper],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3] / "libs")},
    )
    assert proc.stdin is not None and proc.stdout is not None
    forks = _children(os.getpid())  # what this process forked, the worker among them
    try:
        assert proc.pid in forks and not has_strangers(proc.pid, forks)
        proc.stdin.write("\n")  # clone now
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("littered")
        deadline = time.monotonic() + 10
        while not (left := [pid for pid in _marked(mark) if pid != proc.pid]):
            assert time.monotonic() < deadline, "the clone did not start its program"
            time.sleep(0.05)
        assert len(left) == 1  # alive, of the worker's user, and a child of the test's
        assert not has_children(proc.pid)  # not the worker's child...
        assert has_strangers(proc.pid, forks), "the runner would not look for it: it lives on"
    finally:
        kill_user(uid, keep=proc.pid)
        proc.kill()
        proc.communicate()
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # the sibling was this process's child
                pass
        except ChildProcessError:
            pass
