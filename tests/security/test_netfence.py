"""The network fence: a sandboxed handler cannot connect to a service of this host (its
loopback or its own addresses), but to DNS, the stack's HTTP port and the ports
AK_RUNNER__HOST_PORTS names; the services themselves are not fenced."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from akcore import netfence

from tests.helpers import Stack, start_stack, wait_until, write_project

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="only a root runner fences its handlers"),
    pytest.mark.skipif(
        shutil.which("nft") is None and not os.environ.get("AK_TEST_REQUIRE_FENCE"),
        reason="no nft command (Debian's nftables): scripts/nftables installs it",
    ),
]

MANIFEST = """\
version: v1
project:
  name: fenced
"""

CODE = """\
import errno
import socket


def reach(event):
    for host, port in event.data["targets"]:
        try:
            socket.create_connection((host, port), timeout=10).close()
            print(f"{host}:{port} connected")
        except OSError as e:
            print(f"{host}:{port} refused", errno.errorcode.get(e.errno, e.errno))


def shout(event):
    for host, port in event.data["targets"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        try:
            s.sendto(b"hello", (host, port))
            print(f"{host} sent")
        except OSError as e:
            print(f"{host} refused", errno.errorcode.get(e.errno, e.errno))
"""


class Listener:
    """A TCP service of this host that counts who connected."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _own_address() -> str | None:
    """This host's address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # a UDP "connect" sends nothing
        except OSError:
            return None
        address: str = s.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def listeners() -> Iterator[dict[str, Listener]]:
    made = {"loopback": Listener("127.0.0.1"), "let through": Listener("127.0.0.1")}
    own = _own_address()
    if own:
        made["own address"] = Listener(own)
    yield made
    for x in made.values():
        x.close()


@pytest.fixture(scope="module")
def stack(listeners: dict[str, Listener]) -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="ak-fence-"))
    s = start_stack(home, {"AK_RUNNER__HOST_PORTS": str(listeners["let through"].port)})
    s.deploy(write_project(home / "fenced", {"autokitteh.yaml": MANIFEST, "f.py": CODE}))
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


def _reach(stack: Stack, targets: list[tuple[str, int]], how: str = "reach") -> list[str]:
    arg = f"targets={json.dumps(targets)}"
    res = stack.ak("session", "start", "-o", "fenced", "-p", f"f.py:{how}", "-I", arg)
    assert res.returncode == 0, res.stderr
    sid = res.stdout.strip().removeprefix("session_id: ")
    wait_until(
        lambda: (
            len(stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines())
            >= len(targets)
        ),
        f"session {sid} to try every target",
    )
    return stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()


def test_the_banner_says_which_ports_of_this_host_handlers_reach(
    stack: Stack, listeners: dict[str, Listener]
) -> None:
    found = re.search(
        r"network: handlers reach no port of this host but ([\d, ]+)\n", stack.output()
    )
    assert found, stack.output()
    # (and those of other stacks of the same user ids on this machine, if any run)
    ports = {53, listeners["let through"].port, int(stack.url.rpartition(":")[2])}
    assert ports <= {int(p) for p in found[1].split(", ")}


def test_a_handler_cannot_connect_to_a_service_of_this_host(
    stack: Stack, listeners: dict[str, Listener]
) -> None:
    fenced = [x for name, x in listeners.items() if name != "let through"]
    open_ = listeners["let through"]
    http_port = int(stack.url.rpartition(":")[2])
    targets = [(x.host, x.port) for x in fenced] + [
        (open_.host, open_.port),
        ("127.0.0.1", http_port),
    ]
    prints = _reach(stack, targets)
    for x in fenced:
        assert f"{x.host}:{x.port} refused EHOSTUNREACH" in prints, prints
        assert x.accepted == 0
    assert f"{open_.host}:{open_.port} connected" in prints, prints
    assert f"127.0.0.1:{http_port} connected" in prints, prints
    wait_until(lambda: open_.accepted == 1, "the let-through port's one connection")
    # The services, and anything else of this host's own users, are not fenced.
    socket.create_connection((fenced[0].host, fenced[0].port), timeout=5).close()
    wait_until(lambda: fenced[0].accepted == 1, "the test's own connection")


def test_a_handler_cannot_reach_this_hosts_udp_services_by_broadcast_or_multicast(
    stack: Stack,
) -> None:
    """The kernel loops a broadcast or multicast datagram back to this host's own sockets
    bound to every address (statsd, syslog, SNMP...): refused as a unicast one is."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as service:
        service.bind(("0.0.0.0", 0))
        port = service.getsockname()[1]
        targets = [("255.255.255.255", port), ("224.0.0.1", port), ("127.0.0.1", port)]
        own = _own_address()
        if own:  # its subnet's broadcast address, as a /24 would have it
            targets.append((own.rsplit(".", 1)[0] + ".255", port))
        prints = _reach(stack, targets, "shout")
        for host, _ in targets:
            assert f"{host} refused EPERM" in prints or f"{host} refused EACCES" in prints, prints
        service.setblocking(False)
        with pytest.raises(BlockingIOError):
            service.recvfrom(100)  # nothing came
        # (while this test's own datagram, not from a worker's user, does)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mine:
            mine.sendto(b"x", ("127.0.0.1", port))
        service.settimeout(5)
        assert service.recvfrom(100)[0] == b"x"


def test_the_fence_is_one_table_per_user_id_range(tmp_path: Path) -> None:
    """Put up for a range of its own (no worker runs in it), it is a table of that name, and
    putting it up again replaces it (one table, the new ports)."""
    first, last = 3_999_000, 3_999_009
    name = netfence.table_name(first, last)
    try:
        # (the registry is this test's own: the process's ports replace their last entry)
        netfence.put_up(first, last, (53, 1234), tmp_path)
        netfence.put_up(first, last, (53, 4321), tmp_path)
        listed = _nft("list", "table", "inet", name)
        assert "4321" in listed and "1234" not in listed
        assert "meta skuid 3999000-3999009" in listed
        assert _nft("list", "tables").count(name) == 1
    finally:
        _nft("delete", "table", "inet", name)


def _nft(*args: str) -> str:
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=True).stdout
