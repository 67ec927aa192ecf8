"""`ak up` as a supervisor: a dead child is reported and restarted at once, a crash loop backs
off; Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from ak_cli.restarts import CRASH_LOOP, QUICK

from tests.helpers import AK, Stack, free_port, start_stack


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pid_of(stack: Stack, service: str, not_pid: int = 0, timeout: float = 10) -> int:
    """The pid of the service's process (other than ``not_pid``), once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in _children(stack.proc.pid):
            if p != not_pid and f"ak_{service}" in _cmdline(p):
                return p
        time.sleep(0.02)
    raise AssertionError(f"no new {service} process:\n{stack.output()[-3000:]}")


def test_killed_services_are_back_at_once_and_a_crash_loop_backs_off(tmp_path: Path) -> None:
    stack = start_stack(tmp_path)
    try:
        for service in ("store", "dispatcher", "runner", "ingress"):
            for _ in range(2):  # twice in a row: no back-off for a service that got going
                old = _pid_of(stack, service)
                time.sleep(QUICK)  # it got going (a death sooner is a failed start)
                os.kill(old, signal.SIGKILL)
                t0 = time.monotonic()
                _pid_of(stack, service, not_pid=old)
                assert time.monotonic() - t0 < 2.0, stack.output()[-3000:]
        assert stack.output().count("killed by SIGKILL") == 8
        assert "restarting it in" not in stack.output()

        # Killed again as soon as it starts: a failed start each time; from the third in a
        # row the restart waits (1 s, then 2 s, ...).
        pid = _pid_of(stack, "dispatcher")
        for _ in range(CRASH_LOOP):
            os.kill(pid, signal.SIGKILL)
            pid = _pid_of(stack, "dispatcher", not_pid=pid)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        _pid_of(stack, "dispatcher", not_pid=pid)
        assert time.monotonic() - t0 >= 0.8
        out = stack.output()
        assert re.search(
            rf"dispatcher killed by SIGKILL after [\d.]+s, {CRASH_LOOP} failed starts in a row "
            r".*: crash loop; restarting it in 1s",
            out,
        ), out[-3000:]
        assert "[ak] restarting dispatcher" in out

        def ready() -> bool:
            try:
                return stack.request("GET", "/readyz")[0] == 200
            except OSError:  # the ingress killed above may still be starting (a busy machine)
                return False

        stack.wait_until(ready, "the stack to serve again", 30)
    finally:
        stack.stop()


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
        assert re.search(
            r"runner killed by SIGKILL after [\d.]+s; restarting it now", stack.output()
        )
        # Its nats-server flushes every write before acknowledging it (AK_NATS__SYNC).
        conf = tmp_path / "data" / "autokitteh" / "nats" / "nats-server.conf"
        assert "sync_interval: always" in conf.read_text()
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


def test_one_ak_up_per_data_home_and_none_of_its_processes_outlive_it(tmp_path: Path) -> None:
    """A second `ak up` on the same data home is refused (two nats-servers on one
    JetStream directory and two stores on one database lost accepted events); and `ak up`
    killed outright takes its services and nats-server with it, so that the next one may
    start (they ran on unsupervised, and held the data home)."""
    from ak_cli.up import LOCK_FILE, _holders

    stack = start_stack(tmp_path)
    lock = Path(stack.env["XDG_DATA_HOME"]) / "autokitteh" / LOCK_FILE
    try:
        ours = _holders(lock)
        assert stack.proc.pid in ours and len(ours) >= 5, ours  # ak up, nats-server, services
        second = subprocess.run(
            [AK, "up", "--mode", "dev"],
            env={**stack.env, "AK_HTTP__ADDR": f"127.0.0.1:{free_port()}"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert f"another `ak up` is using the data home {lock.parent}" in second.stderr
        assert str(stack.proc.pid) in second.stderr
        stack.proc.send_signal(signal.SIGKILL)
        stack.proc.wait()
        stack.wait_until(lambda: not _holders(lock), "ak up's processes to end with it")
    finally:
        for pid in _holders(lock):
            os.kill(pid, signal.SIGKILL)
    again = start_stack(tmp_path)  # the same data home
    assert again.stop() == 0
