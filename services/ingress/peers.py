"""Which user is at the other end of a loopback TCP connection.

The kernel answers for one socket, found by its addresses, over netlink (``sock_diag``,
what ``ss`` asks): the client's end of a connection to us is the socket whose local address
is the connection's peer and whose remote address is ours. Where netlink is refused (a
seccomp profile, an old kernel), the same comes from ``/proc/net/tcp`` and
``/proc/net/tcp6``, which list every TCP socket of the network namespace (a read that grows
with the number of connections). Used when API tokens are off (dev mode on loopback): the
API then answers only the user that runs the server, not a handler's sandbox user or
another account on the machine; and to tell a trusted proxy on loopback from a handler.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
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
    try:
        found = _asked(client, server)
    except (OSError, struct.error, ValueError):  # (netlink refused here: the table, whole)
        return _listed(client, server)
    # No such socket, or a kernel without TCP's sock_diag (it says the same): the table.
    return _listed(client, server) if found is _NONE_FOUND else found


# Netlink's sock_diag (linux/sock_diag.h, linux/inet_diag.h).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1
_NO_COOKIE = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2: family, protocol, ext, pad, states
_SOCKET_ID = struct.Struct("!HH16s16s")  # inet_diag_sockid: ports, addresses (network order)
_ID_REST = struct.Struct("=III")  # inet_diag_sockid: interface, cookie (two words)
_UID_INODE = struct.Struct("=II")  # inet_diag_msg: uid and inode, after 64 bytes


_NONE_FOUND = -1  # (the kernel found no such socket)


def _asked(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """``owner`` by one netlink request for that one socket (``_NONE_FOUND`` when the
    kernel says there is none); OSError when netlink fails."""
    local = ipaddress.ip_address(client[0].strip("[]"))
    remote = ipaddress.ip_address(server[0].strip("[]"))
    family = socket.AF_INET6 if local.version == 6 else socket.AF_INET
    request = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
        + _SOCKET_ID.pack(client[1], server[1], local.packed, remote.packed)
        + _ID_REST.pack(0, _NO_COOKIE, _NO_COOKIE)
    )
    header = _HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2)
        nl.sendall(header + request)
        answer = nl.recv(8192)
    _, kind, _, _, _ = _HEADER.unpack_from(answer)
    body = _HEADER.size
    if kind == _NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", answer, body)
        if code == -errno.ENOENT:  # no such socket (closed and gone), or no tcp_diag
            return _NONE_FOUND
        raise OSError(-code, "sock_diag refused the request")
    if kind != _SOCK_DIAG_BY_FAMILY or len(answer) < body + 72:
        raise OSError(errno.EPROTO, "sock_diag answered something else")
    state = answer[body + 1]
    uid, inode = _UID_INODE.unpack_from(answer, body + 64)
    return uid if f"{state:02X}" in _HELD_STATES and inode else None


def _listed(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """``owner`` from the kernel's table of every TCP socket."""
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
