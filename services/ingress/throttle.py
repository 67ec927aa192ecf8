"""How much failing one client may cost: a budget of failed requests per address (or per
address and what it names); and how much one project's webhooks may bring in: a budget of
bytes per project (``WebhookBytes``)."""

from __future__ import annotations

import time
from collections import OrderedDict

from akcore.errors import ResourceExhausted


class _Buckets:
    """Token buckets by key, each holding up to ``burst`` and gaining ``per_second``; the
    ``kept`` keys spent from last are remembered (one forgotten starts full again)."""

    clock = staticmethod(time.monotonic)  # (a test's own, to refill the buckets at will)

    def __init__(self, burst: float, per_second: float, kept: int) -> None:
        self.burst, self.per_second, self.kept = burst, per_second, kept
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def level(self, key: str, now: float) -> float:
        level, since = self._buckets.get(key, (self.burst, now))
        return min(self.burst, level + (now - since) * self.per_second)

    def spend(self, key: str, amount: float, now: float) -> None:
        self._buckets[key] = (self.level(key, now) - amount, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.kept:
            self._buckets.popitem(last=False)


class FailedTries(_Buckets):
    """Token buckets of failed requests (a bad token, a bad signature), one per client
    (an address, or an address and what it names: ``Refusals``): ``BURST`` failures at
    once, then ``PER_SECOND``; a client out of them is refused (429) before its request is
    looked at, so guessing costs the store nothing. The ``CLIENTS`` last seen are
    remembered."""

    BURST = 50.0
    PER_SECOND = 10.0
    CLIENTS = 10_000

    def __init__(self, what: str) -> None:
        super().__init__(self.BURST, self.PER_SECOND, self.CLIENTS)
        self.what = what  # what failed, for the message: "requests with a bad signature"

    def check(self, client: str) -> None:
        """ResourceExhausted when ``client`` has no failure left to spend."""
        if client in self._buckets and self.level(client, self.clock()) < 1.0:
            raise ResourceExhausted(
                f"too many {self.what} from this address; wait {1 / self.PER_SECOND:g} s "
                "and try again"
            )

    def failed(self, client: str) -> None:
        self.spend(client, 1.0, self.clock())


class Refusals:
    """A provider's requests from one address (GitHub and Slack send every customer's
    from a few shared addresses): refusals are counted per address and routing key (the
    connection a request names), and only those of a connection that refused the
    signature. A stranger whose requests name no connection, or a connection of theirs,
    so spends only their own budget, never the one of the deliveries to other
    connections from the same address."""

    def __init__(self, tries: FailedTries, address: str) -> None:
        self._tries, self._address = tries, address

    def check(self, route: str) -> None:
        """ResourceExhausted when requests for ``route`` from this address have no
        failure left to spend."""
        self._tries.check(f"{self._address} {route}")

    def failed(self, route: str) -> None:
        self._tries.failed(f"{self._address} {route}")


class WebhookBytes(_Buckets):
    """Token buckets of webhook bytes, one per project: ``per_second`` of them (each
    request counts its body, its URL and headers (``app._head_bytes``) and
    ``REQUEST_COST``), up to ``BURST_SECONDS`` of that at once.
    A request over its project's budget is refused (429) before its event is stored: the
    dispatcher took every project's events in one queue, so 49 requests a second of 500
    KiB to one project's public webhook (no token needed) held up every other project's
    sessions by 40 s and more. Once a body is parsed (``owe``), it counts again when its
    event carries it as text too (``body.text`` beside ``body.bytes``: 8 MiB a second
    had AK_EVENTS and the database take 16), and a JSON body counts
    ``JSON_CONTAINER_BYTES`` for each list and map it holds: each is a Python object on every
    hop, ~1 µs and 64 bytes or more, and a 512 KiB body of 175,000 empty maps took ~200 ms
    of the stack's CPU to run (a text body of as many bytes ~40 ms): 16 of them a second, within
    8 MiB, held another project's sync webhook up to 32 s. The ``PROJECTS`` last seen are
    remembered."""

    JSON_CONTAINER_BYTES = 64

    BURST_SECONDS = 4.0
    REQUEST_COST = 1024  # bytes a request counts besides its body (its head, its event)
    PROJECTS = 10_000

    def __init__(self, per_second: int) -> None:
        """``per_second``: bytes; 0: no limit."""
        super().__init__(per_second * self.BURST_SECONDS, per_second, self.PROJECTS)

    def take(self, project_id: str, body_bytes: int) -> float:
        """0.0 when the project may send this request now (it is counted), else the seconds
        until it may (nothing counted)."""
        if self.per_second <= 0:
            return 0.0
        now = self.clock()
        level = self.level(project_id, now)
        cost = min(body_bytes + self.REQUEST_COST, self.burst)  # (one may always come)
        if level < cost:
            return (cost - level) / self.per_second
        self.spend(project_id, cost, now)
        return 0.0

    def owe(self, project_id: str, cost: int) -> None:
        """Counts ``cost`` more bytes for a request already let in (``take``), below zero
        if need be: the project's next requests wait until it is paid off."""
        if self.per_second > 0 and cost > 0:
            self.spend(project_id, cost, self.clock())
