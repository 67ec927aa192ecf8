"""The network fence's rules, and what a runner does when nftables cannot take them."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from akcore import config, netfence
from akcore.errors import AKError

from services.runner.service import _fence


def test_the_rules_refuse_the_worker_range_this_host_but_the_ports_let_through() -> None:
    rules = netfence.ruleset(820000, 829999, (9980, 53, 5432)).splitlines()
    name = "autokitteh_workers_820000_829999"
    # Replaced whole in one transaction (declared first so that the delete never fails).
    assert rules[:3] == [f"table inet {name}", f"delete table inet {name}", f"table inet {name} {{"]
    body = [x.strip() for x in rules[3:]]
    assert "type filter hook output priority raw; policy accept;" in body
    uids = "meta skuid 820000-829999"
    refuse = "reject with icmpx admin-prohibited"
    # Every rule names the range: packets without a socket (the kernel's) are never matched.
    assert all(x.startswith(uids) for x in body if "reject" in x or x.endswith(" accept"))
    assert body.index(
        f"{uids} fib daddr type local meta l4proto {{ tcp, udp }} th dport {{ 53, 5432, 9980 }} "
        "accept"
    ) < body.index(f"{uids} fib daddr type local reject with icmpx admin-prohibited")
    # Broadcast and multicast loop back to this host's own sockets bound to every address.
    assert f"{uids} fib daddr type {{ broadcast, multicast }} {refuse}" in body
    assert f"{uids} ip daddr {{ 169.254.0.0/16, 100.100.100.200 }} {refuse}" in body
    assert f"{uids} ip6 daddr {{ fd00:ec2::254, fd20:ce::254 }} {refuse}" in body


def test_the_ports_let_through_are_dns_the_http_port_and_those_named() -> None:
    assert netfence.allowed_ports("0.0.0.0:9973", (5432,)) == (53, 5432, 9973)
    assert netfence.allowed_ports("[::1]:8080", ()) == (53, 8080)


def _fake_nft(tmp_path: Path, script: str) -> None:
    nft = tmp_path / "nft"
    nft.write_text("#!/bin/sh\n" + script)
    nft.chmod(nft.stat().st_mode | stat.S_IXUSR)


def test_put_up_says_why_it_could_not(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(netfence.FenceError, match="the nft command is missing"):
        netfence.put_up(820000, 829999, (53,))
    _fake_nft(tmp_path, "/bin/cat >/dev/null; echo 'Error: Operation not permitted' >&2; exit 1\n")
    with pytest.raises(netfence.FenceError, match="nft refused the rules: Error: Operation not"):
        netfence.put_up(820000, 829999, (53,), tmp_path / "fence")


def test_put_up_hands_nft_the_rules_with_every_live_processs_ports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    _fake_nft(tmp_path, f'[ "$1 $2" = "-f -" ] && /bin/cat > {tmp_path}/given\n')
    registry = tmp_path / "fence"
    assert netfence.put_up(820000, 829999, (53, 9980), registry) == (53, 9980)
    assert (tmp_path / "given").read_text() == netfence.ruleset(820000, 829999, (53, 9980))
    # Another live stack's ports stay let through; a dead one's go.
    folder = registry / "820000-829999"
    (folder / str(os.getppid())).write_text("53,5432")
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    (folder / str(dead.pid)).write_text("6379")
    assert netfence.put_up(820000, 829999, (53, 9981), registry) == (53, 5432, 9981)
    assert (tmp_path / "given").read_text() == netfence.ruleset(820000, 829999, (53, 5432, 9981))
    assert sorted(x.name for x in folder.iterdir()) == sorted(
        [".lock", str(os.getppid()), str(os.getpid()), f"{os.getpid()}.started"]
    )
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_registered_process_id_given_to_another_process_lets_nothing_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A dead stack's process id reused by any process (root's kill(pid, 0) succeeds on
    every one), or its zombie, must not keep its ports open: entries carry their process's
    start time, in a file of its own (older code reads the ports file alone)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    _fake_nft(tmp_path, "/bin/cat >/dev/null\n")
    registry = tmp_path / "fence"
    assert netfence.put_up(820000, 829999, (53, 9980), registry) == (53, 9980)
    folder = registry / "820000-829999"
    me = str(os.getpid())
    assert (folder / me).read_text() == "53,9980"  # as older code wrote and reads it
    assert (folder / f"{me}.started").read_text() == netfence._started(os.getpid()) != ""
    # the parent (running) as registered by an earlier process of the same id
    parent = str(os.getppid())
    (folder / parent).write_text("5432")
    (folder / f"{parent}.started").write_text("1")
    assert netfence.put_up(820000, 829999, (53, 9981), registry) == (53, 9981)
    assert not (folder / parent).exists() and not (folder / f"{parent}.started").exists()
    # ... and as it registered itself, or as older code did (no start time)
    (folder / parent).write_text("5432")
    (folder / f"{parent}.started").write_text(netfence._started(os.getppid()))
    assert netfence.put_up(820000, 829999, (53,), registry) == (53, 5432)
    (folder / f"{parent}.started").unlink()
    (folder / parent).write_text("6379")
    assert netfence.put_up(820000, 829999, (53,), registry) == (53, 6379)
    # a zombie (dead, not waited for yet) lets nothing through; a start time alone goes
    zombie = subprocess.Popen(["/bin/true"])
    while netfence._started(zombie.pid):
        time.sleep(0.01)  # (until it is a zombie: its exit not collected)
    (folder / str(zombie.pid)).write_text("11211")
    (folder / "999999999.started").write_text("5")
    assert netfence.put_up(820000, 829999, (53,), registry) == (53, 6379)
    assert not (folder / str(zombie.pid)).exists()
    assert not (folder / "999999999.started").exists()
    zombie.wait()


def test_put_up_refuses_a_registry_others_can_write(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    _fake_nft(tmp_path, "/bin/cat >/dev/null\n")
    (tmp_path / "fence" / "820000-829999").mkdir(parents=True)
    (tmp_path / "fence" / "820000-829999").chmod(0o777)
    with pytest.raises(netfence.FenceError, match="no one else can write to"):
        netfence.put_up(820000, 829999, (53,), tmp_path / "fence")


def _settings(monkeypatch: pytest.MonkeyPatch, fence: str) -> config.Settings:
    monkeypatch.setenv("AK_RUNNER__NETWORK_FENCE", fence)
    return config.Settings.from_env()


def test_a_runner_without_nft_warns_or_with_the_fence_required_does_not_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        _fence(_settings(monkeypatch, "auto"))
    assert "handlers may connect to services on this host: the nft command is missing" in (
        caplog.text
    )
    with pytest.raises(AKError, match="handlers cannot be fenced off this host: the nft"):
        _fence(_settings(monkeypatch, "required"))


def test_fence_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AK_RUNNER__NETWORK_FENCE", "AK_RUNNER__HOST_PORTS"):
        monkeypatch.delenv(name, raising=False)
    s = config.Settings.from_env()
    assert (s.network_fence, s.host_ports) == ("auto", ())
    monkeypatch.setenv("AK_RUNNER__HOST_PORTS", "6379,5432, 6379")
    assert config.Settings.from_env().host_ports == (5432, 6379)
    for bad in ("5432;6379", "0", "70000", "http"):
        monkeypatch.setenv("AK_RUNNER__HOST_PORTS", bad)
        with pytest.raises(ValueError, match="AK_RUNNER__HOST_PORTS must be port numbers"):
            config.Settings.from_env()
    monkeypatch.setenv("AK_RUNNER__HOST_PORTS", "")
    monkeypatch.setenv("AK_RUNNER__NETWORK_FENCE", "on")
    with pytest.raises(ValueError, match="AK_RUNNER__NETWORK_FENCE must be one of auto, required"):
        config.Settings.from_env()


def test_the_registry_passes_over_what_it_cannot_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only root writes there, but a stray file must not stop every runner from starting."""
    monkeypatch.setenv("PATH", str(tmp_path))
    _fake_nft(tmp_path, "/bin/cat >/dev/null\n")
    folder = tmp_path / "fence" / "820000-829999"
    folder.mkdir(parents=True, mode=0o700)
    (folder / str(os.getppid())).write_bytes(b"\xff,53,\xb2,9" * 3 + b"," + b"7" * 4400)
    (folder / "\u00b2").write_text("1")  # (a digit to str.isdigit, not to int)
    (folder / ("9" * 30)).write_text("2")
    (folder / "x.lock").mkdir()
    assert netfence.put_up(820000, 829999, (80,), tmp_path / "fence") == (9, 53, 80)


def test_the_fence_off_leaves_the_table_to_the_other_live_stacks_of_its_range(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    _fake_nft(tmp_path, f"/bin/cat >> {tmp_path}/given\n")
    registry = tmp_path / "fence"
    (registry / "820000-829999").mkdir(parents=True, mode=0o700)
    (registry / "820000-829999" / str(os.getppid())).write_text("53,9980")
    assert netfence.take_down(820000, 829999, registry) == [os.getppid()]
    assert not (tmp_path / "given").exists()  # nft not asked
    (registry / "820000-829999" / str(os.getppid())).unlink()
    assert netfence.take_down(820000, 829999, registry) == []
    assert "delete table inet autokitteh_workers_820000_829999" in (tmp_path / "given").read_text()
