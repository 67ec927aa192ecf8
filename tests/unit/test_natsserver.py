"""The embedded nats-server's configuration: what the running server reports it uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from akcore import natsserver


def _jetstream_config(conf: Path) -> dict[str, Any]:
    """Runs the server on ``conf`` with a monitoring port and reads its JetStream settings."""
    port = natsserver.free_port()
    args = [natsserver.binary(), "-c", str(conf), "-p", "-1", "-m", str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=1) as r:
                    return json.load(r)["jetstream"]["config"]  # type: ignore[no-any-return]
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("sync, flushed", [("always", True), ("default", None)])
def test_sync_interval(tmp_path: Path, sync: str, flushed: bool | None) -> None:
    proc, _ = natsserver.start(tmp_path, sync=sync)
    proc.terminate()
    proc.wait(timeout=10)
    config = _jetstream_config(tmp_path / "nats-server.conf")
    assert config.get("sync_always") is flushed
    assert config["store_dir"].startswith(str(tmp_path))  # the config start() wrote


def test_unknown_sync_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="always, default"):
        natsserver.start(tmp_path, sync="sometimes")


def test_ak_up_refuses_an_unknown_sync_setting() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "ak_cli.main", "up", "--mode", "dev"],
        env={**os.environ, "AK_NATS__SYNC": "sometimes"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert res.stderr == "Error: AK_NATS__SYNC must be always or default (got 'sometimes')\n"


def test_a_port_another_process_listens_on_is_refused(tmp_path: Path) -> None:
    """Whatever listens on the port would pass for the server (and get the services'
    passwords): `ak up` restarting its nats-server must hear that the port is taken."""
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} of 127.0.0.1 is taken"):
            natsserver.start(tmp_path / "nats", port=port)


def test_a_start_cancelled_while_waiting_stops_the_server(tmp_path: Path) -> None:
    """`ak up` hears Ctrl-C while its nats-server reads a large store back: the start gives
    up and leaves no server running."""
    with pytest.raises(RuntimeError, match="stopped while it started"):
        natsserver.start(tmp_path / "nats", cancelled=lambda: True)
    conf = str(tmp_path / "nats" / "nats-server.conf")
    left = subprocess.run(["pgrep", "-f", conf], capture_output=True, text=True).stdout
    assert left == ""


def test_ctrl_c_during_the_first_start_leaves_no_server(tmp_path: Path) -> None:
    """Before `ak up` sets its signal handlers, Ctrl-C is a KeyboardInterrupt in the wait;
    the server, in a session of its own, did not get the signal and must not outlive it."""

    def interrupted() -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        natsserver.start(tmp_path / "nats", cancelled=interrupted)
    conf = str(tmp_path / "nats" / "nats-server.conf")
    left = subprocess.run(["pgrep", "-f", conf], capture_output=True, text=True).stdout
    assert left == ""


def test_a_free_port_is_never_one_to_avoid(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ak up` starts NATS before its HTTP server listens: the kernel may offer NATS the
    HTTP port (free until then), and the stack's /readyz then reached nats-server."""
    offered = [50429, 50429, 50431]

    class Kernel:
        def __init__(self) -> None:
            self.port = offered.pop(0)

        def __enter__(self) -> Kernel:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def bind(self, _addr: tuple[str, int]) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(natsserver.socket, "socket", Kernel)
    assert natsserver.free_port(avoid=(50429,)) == 50431
    assert offered == []


def test_ak_up_refuses_a_nats_port_that_is_the_http_port(tmp_path: Path) -> None:
    port = natsserver.free_port()
    res = subprocess.run(
        [sys.executable, "-m", "ak_cli.main", "up", "--mode", "dev"],
        env={
            **os.environ,
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "AK_HTTP__ADDR": f"127.0.0.1:{port}",
            "AK_NATS__PORT": str(port),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert res.stderr == (
        f"Error: AK_NATS__PORT={port} is the HTTP port too: pick another for one of them "
        "(AK_HTTP__ADDR or --http-addr)\n"
    )
