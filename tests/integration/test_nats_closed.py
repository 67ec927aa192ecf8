"""A service process whose NATS connection is closed for good ends with exit code 1 (its
supervisor restarts it), saying why in one line; a service stopped by a signal closes its
own connection and exits 0, saying nothing of the kind. Each case runs a small service
through the entry point every service has (``akcore.service.main``, ``connect_service``);
then ``bus.connect``'s own part, in-process: which closes are a loss."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from akcore import bus, natsserver

# A service that connects and waits to be stopped. ``refused``: it announces a message over
# the server's limit on its own socket (nats-py's publish would refuse it), which the
# server answers with -ERR and a close. ``stuck``: its shutdown never ends.
PROBE = """\
import asyncio
import sys

from akcore import bus, service


async def run(settings, stop):
    nc = await bus.connect_service(settings, "probe")
    print("connected", flush=True)
    if "refused" in sys.argv:
        nc._transport.write(b"PUB probe %d\\r\\n" % (nc.max_payload + 1))
    await stop.wait()
    if "stuck" in sys.argv:
        await asyncio.Event().wait()
    await bus.close(nc)


service.END_GRACE = 0.5
service.main("probe", run)
"""

SAID = "the NATS connection of ak-probe was closed for good (nats: maximum payload violation)"


def _start(tmp_path: Path, nats_url: str, *args: str) -> subprocess.Popen[str]:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    env = {**os.environ, "AK_NATS_URL": nats_url, "XDG_DATA_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, str(probe), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "connected\n", proc.communicate()[1]
    return proc


def _ended(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Its exit code and log, once it ended by itself (a bound, not a measure)."""
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"still running after 30 s:\n{err}") from None
    return proc.returncode, err


@pytest.mark.parametrize("shutdown", ["clean", "stuck"])
def test_a_connection_closed_for_good_ends_the_service(
    tmp_path: Path, nats_url: str, shutdown: str
) -> None:
    """Before, nats-py took the server's -ERR as the connection's end (no reconnect) and
    the process lived on without NATS, so no supervisor restarted it."""
    proc = _start(tmp_path, nats_url, "refused", shutdown)
    code, err = _ended(proc)
    assert code == 1, err
    assert err.count(f"{SAID}; exiting so that the supervisor restarts this service") == 1
    assert ("still stopping after 0.5s: exiting now" in err) == (shutdown == "stuck")
    assert "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_service_stopped_by_a_signal_exits_0(
    tmp_path: Path, nats_url: str, sig: signal.Signals
) -> None:
    """Its own close (``bus.close``, as every service stops) is not taken for a loss."""
    proc = _start(tmp_path, nats_url)
    proc.send_signal(sig)
    code, err = _ended(proc)
    assert code == 0, err
    assert "closed for good" not in err


async def test_on_lost_hears_of_a_close_for_good_and_not_of_the_owners(nats_url: str) -> None:
    lost: list[str] = []
    closed = await bus.connect(nats_url, "refused", on_lost=lost.append)
    mine = await bus.connect(nats_url, "mine", on_lost=lost.append)
    await mine.close()
    closed._transport.write(b"PUB probe %d\r\n" % (closed.max_payload + 1))
    await asyncio.wait_for(_until(lambda: bool(lost)), 10)
    assert lost == [
        "the NATS connection of refused was closed for good (nats: maximum payload violation)"
    ]


async def test_reconnects_running_out_count_as_a_loss(tmp_path: Path) -> None:
    """Services never run out (``max_reconnect_attempts=-1``); a client that does is
    closed by nats-py itself, which is no close its owner asked for."""
    server, url = natsserver.start(tmp_path / "nats")
    closed = asyncio.Event()
    nc = bus.CancellableClient()

    async def on_closed() -> None:
        closed.set()

    await nc.connect(url, max_reconnect_attempts=1, reconnect_time_wait=0.1, closed_cb=on_closed)
    server.terminate()
    server.wait()
    await asyncio.wait_for(closed.wait(), 30)
    assert not nc.asked_to_close


async def _until(probe: Callable[[], bool]) -> None:
    while not probe():
        await asyncio.sleep(0.01)


# nats-py leaves the socket of each refused reconnect to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_refused_reconnects_are_said_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A service whose server comes back not taking its user any more (restarted with
    other passwords) keeps trying, refused each time (another server of a cluster may take
    it): it said so in one log line per try, twice a second, for as long as it lasted. Now
    once, then once a minute with how many more there were."""
    from akcore import natsauth

    def auth(password: str) -> str:
        return natsauth.authorization_block({"runner": json.dumps(password)}, {})

    proc, url = natsserver.start(tmp_path / "nats", auth=auth("first"))
    port = int(url.rsplit(":", 1)[1])
    nc = await bus.connect(url, "ak-runner", user="runner", password="first")
    proc.terminate()
    proc.wait(timeout=10)
    log_file = tmp_path / "nats.log"
    proc, _ = natsserver.start(tmp_path / "nats", port=port, auth=auth("second"), log_file=log_file)
    try:
        for _ in range(600):
            if log_file.read_text().count("authentication error") >= 4:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(log_file.read_text()[-2000:])
        # (nats-py tries again only once its error callback of the try before returned:
        # four refusals the server logged are three the client has heard at least)
        said = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert not nc.is_closed
        await nc.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
