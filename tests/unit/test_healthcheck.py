"""The image's health check reads the container's /proc: which service runs, and whether it
holds a connection to NATS (an ingress must also answer /healthz)."""

from __future__ import annotations

from pathlib import Path

import pytest
from akcore import healthcheck

# /proc/net/tcp: a listening socket, a connection to 4222 (0x107E), one to 5432 (0x1538).
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:26E4 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1
   1: 0200120A:B0C2 0300120A:107E 01 00000000:00000000 00:00000000 00000000  1000        0 2
   2: 0200120A:B0C4 0400120A:1538 01 00000000:00000000 00:00000000 00000000  1000        0 3
"""


def test_the_service_is_read_from_its_command_line() -> None:
    assert healthcheck.service_of(["python", "-m", "ak_runner"]) == "runner"
    assert healthcheck.service_of(["/opt/autokitteh/bin/python", "-m", "ak_store", "-x"]) == "store"
    assert healthcheck.service_of(["python", "-m", "ak_cli"]) is None
    assert healthcheck.service_of(["python", "-c", "import time", "ak_litter"]) is None
    assert healthcheck.service_of(["/sbin/docker-init", "--", "python", "-m", "ak_ingress"]) == (
        "ingress"
    )


def test_nats_ports_and_established_connections() -> None:
    url = "nats://nats-1:4222,nats://nats-2:4223, nats://nats-3"
    assert healthcheck.nats_ports(url) == {4222, 4223}
    assert healthcheck.established_remote_ports(TCP.splitlines()[1:]) == {4222, 5432}


def _proc(tmp_path: Path, cmdlines: list[list[str]], tcp: str) -> Path:
    for pid, argv in enumerate(cmdlines, start=1):
        (tmp_path / str(pid)).mkdir(parents=True)
        (tmp_path / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(tcp)
    return tmp_path


def test_healthy_with_a_nats_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AK_NATS_URL", "nats://nats-1:4222,nats://nats-2:4222")
    init = ["/sbin/docker-init", "--", "python", "-m", "ak_store"]
    proc = _proc(tmp_path, [init, ["python", "-m", "ak_store"]], TCP)
    assert healthcheck.check(proc) is None


def test_unhealthy_without_nats_or_without_a_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AK_NATS_URL", "nats://nats-1:4333")
    proc = _proc(tmp_path / "a", [["python", "-m", "ak_dispatcher"]], TCP)
    assert healthcheck.check(proc) == "dispatcher: no connection to a NATS server (ports [4333])"
    proc = _proc(tmp_path / "b", [["sleep", "1"]], TCP)
    assert healthcheck.check(proc) == "expected one autokitteh service in this container, found []"
