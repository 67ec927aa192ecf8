"""A container's health check (the image's HEALTHCHECK): is this container's service up?

``python -m akcore.healthcheck`` finds the service by its command line (``python -m
ak_<service>``) among the container's processes and answers 0 when it is running and holds a
connection to a NATS server; an ingress must also answer ``/healthz`` on its port. Per
container on purpose: a NATS ping of ``ak.health.<service>`` would be answered by any replica.
Imports only the standard library, so that a check every few seconds costs little.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

SERVICES = ("ingress", "dispatcher", "runner", "store")
ESTABLISHED = "01"  # the state column of /proc/net/tcp


def service_of(cmdline: list[str]) -> str | None:
    """``ingress`` for ``python -m ak_ingress ...``; None for any other command."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "-m" and cmdline[i + 1].startswith("ak_"):
            name = cmdline[i + 1][3:]
            return name if name in SERVICES else None
    return None


def nats_ports(url: str) -> set[int]:
    """The ports of ``AK_NATS_URL`` (a comma-separated list of servers)."""
    return {urlparse(u.strip()).port or 4222 for u in url.split(",") if u.strip()}


def established_remote_ports(lines: Iterable[str]) -> set[int]:
    """Remote ports of the established connections in /proc/net/tcp or tcp6 lines."""
    ports: set[int] = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == ESTABLISHED and ":" in fields[2]:
            ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def _running_services(proc: Path) -> set[str]:
    found: set[str] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        name = service_of(raw.decode(errors="replace").split("\0"))
        if name:
            found.add(name)
    return found


def _connections(proc: Path) -> set[int]:
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            ports |= established_remote_ports((proc / "net" / table).read_text().splitlines()[1:])
        except OSError:
            pass
    return ports


def check(proc: Path = Path("/proc")) -> str | None:
    """None when healthy, else what is wrong."""
    running = _running_services(proc)
    if len(running) != 1:
        return f"expected one autokitteh service in this container, found {sorted(running)}"
    (service,) = running
    wanted = nats_ports(os.environ.get("AK_NATS_URL", "nats://127.0.0.1:4222"))
    if not wanted & _connections(proc):
        return f"{service}: no connection to a NATS server (ports {sorted(wanted)})"
    if service == "ingress":
        port = os.environ.get("AK_HTTP__ADDR", "127.0.0.1:9980").rsplit(":", 1)[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as r:
                if r.status != 200:
                    return f"ingress: /healthz answered {r.status}"
        except OSError as e:
            return f"ingress: /healthz did not answer: {e}"
    return None


def main() -> None:
    if "--help" in sys.argv[1:]:
        print(__doc__)
        return
    problem = check()
    if problem:
        print(problem)
        sys.exit(1)


if __name__ == "__main__":
    main()
