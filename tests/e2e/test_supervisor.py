"""`ak up` as a supervisor: a dead child is reported and restarted; Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import start_stack


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_killed_runner_is_restarted_and_ctrl_c_stops_all(tmp_path: Path) -> None:
    stack = start_stack(tmp_path)
    try:
        kids = _children(stack.proc.pid)
        names = {p: _cmdline(p) for p in kids}
        assert any("nats-server" in c for c in names.values())
        for svc in ("ak_store", "ak_dispatcher", "ak_runner", "ak_ingress"):
            assert any(svc in c for c in names.values()), names
        runner = next(p for p, c in names.items() if "ak_runner" in c)
        os.kill(runner, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = [p for p in _children(stack.proc.pid) if "ak_runner" in _cmdline(p)]
            if new and new[0] != runner:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("runner was not restarted:\n" + stack.output())
        assert re.search(r"runner exited with code -9; restarting in", stack.output())
        # The restarted stack still serves.
        while time.monotonic() < deadline:
            if stack.request("GET", "/readyz")[0] == 200:
                break
            time.sleep(0.2)
        assert stack.request("GET", "/readyz")[0] == 200
        kids = _children(stack.proc.pid)
    finally:
        code = stack.stop()
    assert code == 0
    assert "[ak] stopped" in stack.output()
    for p in kids:
        assert not Path(f"/proc/{p}").exists() or "zombie" in Path(f"/proc/{p}/status").read_text()
