"""Who a request's client is: the socket's peer, or, behind proxies the operator trusts
(``AK_HTTP__TRUSTED_PROXIES``), the address their ``X-Forwarded-For`` gives. The refusal
budgets (a bad token, a bad signature) and a webhook event's ``remote_addr`` are keyed on it:
behind a proxy, the peer is the proxy for every client, and one client's failures would
spend everyone's budget.

``X-Forwarded-For`` is read from its right end: each trusted proxy appends the address it
got the request from, so the first address that is not a trusted proxy's is the client's;
what a client wrote itself stands left of it and is not believed. Who owns a loopback
connection (tokens off) is always the socket's peer, never a header.

A proxy on this host's loopback shares it with every local process, handlers included
(they may reach the stack's HTTP port): a loopback peer is taken for a proxy only when the
socket is not a worker user id's (``peers.owner``: one netlink request per such request,
so a proxy on an address of its own costs less).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request

from . import peers

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientAddresses:
    def __init__(
        self, trusted: Iterable[str] = (), worker_uids: tuple[int, int] | None = None
    ) -> None:
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted]
        self.worker_uids = worker_uids  # (first, last): a handler's sockets are these users'

    def _is_proxy(self, address: IpAddress) -> bool:
        return any(address in network for network in self.trusted)

    def of_request(self, request: Request) -> str:
        """The client of an HTTP request."""
        return self.of(request.scope, request.headers.getlist("x-forwarded-for"))

    def of(self, scope: Any, forwarded: Iterable[str] = ()) -> str:
        """The client's address for an ASGI ``scope`` and its ``X-Forwarded-For`` header
        values ("" when there is no peer: a Unix socket)."""
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        if not self.trusted or not peer:
            return peer
        try:
            address = _ip(peer)
        except ValueError:
            return peer
        hops = [hop.strip() for value in forwarded for hop in value.split(",")]
        if hops and address.is_loopback and self._is_proxy(address) and self._a_worker(scope):
            return peer
        while self._is_proxy(address) and hops:
            try:
                address = _ip(hops.pop())
            except ValueError:  # (a name, a port, garbage: the last sure hop is the client)
                break
        return str(address)

    def _a_worker(self, scope: Any) -> bool:
        """Whether a loopback connection may be a handler's: its socket is a worker user
        id's, or its owner cannot be told (the connection already closed)."""
        if self.worker_uids is None or not peers.supported():
            return False
        client, server = scope.get("client"), scope.get("server")
        uid = peers.owner(tuple(client), tuple(server)) if client and server else None
        first, last = self.worker_uids
        return uid is None or first <= uid <= last


def _ip(text: str) -> IpAddress:
    """An address, an IPv4 one mapped into IPv6 (``::ffff:10.0.0.5``) as IPv4."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
