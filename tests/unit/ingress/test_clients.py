"""Who a request's client is: the peer, or behind trusted proxies the address their
X-Forwarded-For gives, read from its right end."""

from __future__ import annotations

import pytest
from ak_ingress.clients import ClientAddresses


def _scope(peer: str) -> dict[str, object]:
    return {"client": (peer, 50000)}


def test_without_trusted_proxies_the_peer_is_the_client_whatever_a_header_says() -> None:
    assert ClientAddresses().of(_scope("10.0.0.5"), ["203.0.113.9"]) == "10.0.0.5"


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.0.0.5", ["203.0.113.9"], "203.0.113.9"),  # one proxy
        ("10.0.0.5", ["203.0.113.9, 10.0.0.7"], "203.0.113.9"),  # two proxies
        ("10.0.0.5", ["203.0.113.9", "10.0.0.7"], "203.0.113.9"),  # the header twice
        # What the client wrote itself stands left of what the proxy added: not believed.
        ("10.0.0.5", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),
        ("10.0.0.5", ["garbage, 203.0.113.9"], "203.0.113.9"),
        ("10.0.0.5", ["203.0.113.9:4431"], "10.0.0.5"),  # not an address: the proxy is
        ("10.0.0.5", [], "10.0.0.5"),  # a proxy that says nothing
        ("198.51.100.4", ["203.0.113.9"], "198.51.100.4"),  # not through a trusted proxy
        ("::ffff:10.0.0.5", ["2001:db8::7"], "2001:db8::7"),  # mapped IPv4 peer, IPv6 client
    ],
)
def test_behind_trusted_proxies_the_client_is_the_first_address_not_theirs(
    peer: str, forwarded: list[str], client: str
) -> None:
    assert ClientAddresses(["10.0.0.0/8"]).of(_scope(peer), forwarded) == client


def test_no_peer_is_no_address() -> None:
    assert ClientAddresses(["10.0.0.0/8"]).of({"client": None}, ["203.0.113.9"]) == ""
