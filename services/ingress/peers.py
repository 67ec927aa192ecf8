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


# The states a client socket of a connection we are answering can be in while its process
# still holds it: ESTABLISHED, or FIN_WAIT1/2 after it half-closed. A socket its process
# closed (orphaned: inode 0; TIME_WAIT, listed as root's) proves nothing about who sent.
_HELD_STATES = frozenset({"01", "04", "05"})


def owner(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The user id holding the client's socket of the connection ``client`` -> ``server``,
    or None when no process holds one now (it closed already): never a guess."""
    wanted = f"{_hex_address(*client)} {_hex_address(*server)}"
    table = TABLES[1] if ":" in client[0] else TABLES[0]
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and f"{fields[1]} {fields[2]}" == wanted:
            held = fields[3] in _HELD_STATES and fields[9] != "0"  # its state, its inode
            return int(fields[7]) if held else None
    return None
