"""Who holds the client end of a loopback connection (for a tokens-off API)."""

from __future__ import annotations

import os
import socket

import pytest
from ak_ingress import peers

pytestmark = pytest.mark.skipif(not peers.supported(), reason="Linux shows socket owners")


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_owner_of_a_held_client_socket(family: int, host: str) -> None:
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        client = socket.socket(family)
        client.connect(server.getsockname()[:2])
        conn, _ = server.accept()
        with conn:
            peer, me = conn.getpeername()[:2], conn.getsockname()[:2]
            assert peers.owner(peer, me) == os.geteuid()
            # Closed by its process, it is held by no one: not taken for root (which the
            # kernel shows as the owner of such sockets).
            client.close()
            assert peers.owner(peer, me) is None


def test_no_such_connection() -> None:
    assert peers.owner(("127.0.0.1", 1), ("127.0.0.1", 2)) is None
