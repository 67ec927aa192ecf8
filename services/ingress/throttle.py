"""How much failing one client may cost: a budget of failed requests per address."""

from __future__ import annotations

import time
from collections import OrderedDict

from akcore.errors import ResourceExhausted


class FailedTries:
    """Token buckets of failed requests (a bad token, a bad signature), one per client
    address: ``BURST`` failures at once, then ``PER_SECOND``; a client out of them is
    refused (429) before its request is looked at, so guessing costs the store nothing.
    The ``CLIENTS`` last seen are remembered."""

    BURST = 50.0
    PER_SECOND = 10.0
    CLIENTS = 10_000

    def __init__(self, what: str) -> None:
        self.what = what  # what failed, for the message: "requests with a bad signature"
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, client: str, now: float) -> float:
        level, since = self._buckets.get(client, (self.BURST, now))
        return min(self.BURST, level + (now - since) * self.PER_SECOND)

    def check(self, client: str) -> None:
        """ResourceExhausted when ``client`` has no failure left to spend."""
        if client in self._buckets and self._level(client, time.monotonic()) < 1.0:
            raise ResourceExhausted(
                f"too many {self.what} from this address; wait {1 / self.PER_SECOND:g} s "
                "and try again"
            )

    def failed(self, client: str) -> None:
        now = time.monotonic()
        self._buckets[client] = (self._level(client, now) - 1.0, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.CLIENTS:
            self._buckets.popitem(last=False)
