"""Which user is at the other end of a loopback TCP connection.

The kernel lists every TCP socket of the network namespace, with the user id that owns it,
in ``/proc/net/tcp`` and ``/proc/net/tcp6``. The client's end of a connection to us is the
line whose local address is the connection's peer and whose remote address is ours. Used
when API tokens are off (dev mode on loopback): the API then answers only the user that
runs the server, not a handler's sandbox user or another account on the machine.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def supported() -> bool:
    """Whether this system shows its sockets' owners (Linux)."""
    return TABLES[0].exists()


def _hex_address(host: str, port: int) -> str:
    """An address as the kernel prints it: the IP as 32-bit words in host byte order."""
    ip = ipaddress.ip_address(host.strip("[]"))
    raw = ip.packed
    words = (raw[i : i + 4] for i in range(0, len(raw), 4))
    return "".join(f"{int.from_bytes(w, sys.byteorder):08X}" for w in words) + f":{port:04X}"


def owner(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The user id owning the client's socket of the connection ``client`` -> ``server``,
    or None when no such socket is listed (it closed already)."""
    wanted = f"{_hex_address(*client)} {_hex_address(*server)}"
    for table in TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and f"{fields[1]} {fields[2]}" == wanted:
                return int(fields[7])
    return None
