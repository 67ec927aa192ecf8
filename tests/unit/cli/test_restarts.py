"""ak up's restart policy: a killed service comes back at once; a crash loop backs off."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from ak_cli.restarts import CRASH_LOOP, MAX_BACKOFF, QUICK, Restarts, describe

KILLED = -signal.SIGKILL


def test_killed_services_restart_at_once_however_often() -> None:
    policy = Restarts()
    for _ in range(20):  # killed every 5 s: never a back-off
        assert policy.after(KILLED, 5.0) == (0.0, "killed by SIGKILL after 5.0s")
    assert policy.after(-signal.SIGTERM, 3.0)[0] == 0.0
    assert policy.after(0, 3.0)[0] == 0.0  # stopped cleanly (SIGTERM is handled)


def test_a_crash_loop_backs_off_and_ends() -> None:
    policy = Restarts()
    delays = [policy.after(1, 0.5)[0] for _ in range(CRASH_LOOP + 5)]
    assert delays[: CRASH_LOOP - 1] == [0.0] * (CRASH_LOOP - 1)  # a second chance, at once
    assert delays[CRASH_LOOP - 1 :] == [1.0, 2.0, 4.0, 8.0, MAX_BACKOFF, MAX_BACKOFF]
    _, why = policy.after(1, 0.5)
    assert "failed starts in a row" in why and "crash loop" in why
    assert policy.after(KILLED, 10.0)[0] == 0.0  # it got going: the loop is over
    assert policy.after(1, 0.5)[0] == 0.0


def test_what_counts_as_a_failed_start() -> None:
    policy = Restarts()
    for code, ran in [(1, 10.0), (-signal.SIGSEGV, 10.0), (KILLED, QUICK / 2)]:
        policy.after(code, ran)  # exited by itself, crashed, or killed as it started
    assert policy.after(1, 10.0)[0] > 0
    assert Restarts().after(1, 3600.0)[0] == 0.0
    long_lived = Restarts(failures=CRASH_LOOP + 2)
    assert long_lived.after(1, 3600.0)[0] == 0.0  # a long run starts a new count


def test_descriptions() -> None:
    assert describe(1, 0.84) == "exited with code 1 after 0.8s"
    assert describe(2, 0.5) == (
        "exited with code 2 (a setting to fix: its message is above) after 0.5s"
    )
    assert describe(-signal.SIGSEGV, 2.0) == "died of SIGSEGV after 2.0s"
    assert describe(-200, 2.0) == "died of signal 200 after 2.0s"


def test_a_child_that_cannot_start_is_tried_again_from_the_loop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A launch that fails (nats-server's port taken) is reported and left to the next
    check, so that `ak up` goes on supervising the others and hears Ctrl-C meanwhile; a
    crash loop of them backs off."""
    from ak_cli.up import Child

    tries: list[float] = []

    def launch() -> subprocess.Popen[bytes]:
        tries.append(time.monotonic())
        raise RuntimeError("port 4222 of 127.0.0.1 is taken by another process")

    child = Child("nats-server", launch)
    child.start()
    assert len(tries) == 1 and child.proc is None  # not tried again within start()
    child.check()
    child.check()
    assert len(tries) == 3
    child.check()  # the third failed start in a row: a crash loop, it waits
    assert len(tries) == 3
    err = capsys.readouterr().err
    assert "[ak] nats-server did not start (port 4222 of 127.0.0.1 is taken" in err
    assert "crash loop; restarting it in 1s" in err
