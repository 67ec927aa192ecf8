"""Who holds the client end of a loopback connection (for a tokens-off API, and to tell a
trusted proxy on loopback from a handler): asked of the kernel over netlink, or read from
its table of sockets where netlink is refused."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest
from ak_ingress import peers

pytestmark = pytest.mark.skipif(not peers.supported(), reason="Linux shows socket owners")


def _netlink(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    found = peers._asked(client, server)
    return None if found == peers._NONE_FOUND else found


WAYS: dict[str, Callable[[tuple[str, int], tuple[str, int]], int | None]] = {
    "netlink": _netlink,
    "table": peers._listed,
    "owner": peers.owner,
}


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_owner_of_a_held_client_socket(family: int, host: str, way: str) -> None:
    owner = WAYS[way]
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        client = socket.socket(family)
        client.connect(server.getsockname()[:2])
        conn, _ = server.accept()
        with conn:
            peer, me = conn.getpeername()[:2], conn.getsockname()[:2]
            assert owner(peer, me) == os.geteuid()
            # Closed by its process, it is held by no one: not taken for root (which the
            # kernel shows as the owner of such sockets).
            client.close()
            assert owner(peer, me) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's socket needs root to make")
@pytest.mark.parametrize("way", list(WAYS))
def test_another_user_s_socket_is_theirs(way: str) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        ready_r, ready_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a process of user 4242 holding the client end
            try:
                os.setgid(4242)
                os.setuid(4242)
                client = socket.create_connection(server.getsockname())
                os.write(ready_w, b"x")
                os.read(done_r, 1)
                client.close()
            finally:
                os._exit(0)
        try:
            os.read(ready_r, 1)
            conn, _ = server.accept()
            with conn:
                assert WAYS[way](conn.getpeername(), conn.getsockname()) == 4242
        finally:
            os.write(done_w, b"x")
            os.waitpid(pid, 0)
            for fd in (ready_r, ready_w, done_r, done_w):
                os.close(fd)


def test_a_socket_netlink_does_not_find_is_looked_for_in_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel without TCP's sock_diag says "no such socket" for every one: the table."""
    monkeypatch.setattr(peers, "_asked", lambda *_: peers._NONE_FOUND)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.socket() as client:
            client.connect(server.getsockname())
            conn, _ = server.accept()
            with conn:
                assert peers.owner(conn.getpeername(), conn.getsockname()) == os.geteuid()


def test_netlink_refused_falls_back_to_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.socket

    def refusing(family: int = socket.AF_INET, *args: object) -> socket.socket:
        if family == socket.AF_NETLINK:
            raise PermissionError("netlink refused here")
        return real(family, *args)  # type: ignore[arg-type]

    with real() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with real() as client:
            client.connect(server.getsockname())
            conn, _ = server.accept()
            with conn:
                monkeypatch.setattr(socket, "socket", refusing)
                assert peers.owner(conn.getpeername(), conn.getsockname()) == os.geteuid()


@pytest.mark.parametrize("way", list(WAYS))
def test_no_such_connection(way: str) -> None:
    assert WAYS[way](("127.0.0.1", 1), ("127.0.0.1", 2)) is None
