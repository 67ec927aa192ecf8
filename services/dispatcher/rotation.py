"""Which destinations' deferred events a dispatcher takes back next (pure: no I/O).

Events deferred to ``AK_DEFERRED`` are taken back per destination (trigger or connection),
each from its own consumer, so that a flood of one destination's events does not make
another's wait behind it all. A dispatcher handles up to ``total`` deferred events at once;
``Rotation`` deals the free places among the destinations with deferred events in turn, one
place at a time, so that each gets its share of them; one destination holds at most
``share`` (``bus.DEFERRED_SHARE``, which its consumer enforces across dispatchers too).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping


class Rotation:
    """The destinations with deferred events, in the order they take turns."""

    def __init__(self, total: int, share: int, most: int) -> None:
        self.total, self.share, self.most = total, share, most
        self._order: list[str] = []
        self._next = 0  # where the next deal starts

    def __contains__(self, key: str) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._order))

    @property
    def full(self) -> bool:
        """No further destination takes turns (``most`` of them do)."""
        return len(self._order) >= self.most

    def add(self, key: str) -> bool:
        """``key`` takes turns from now on (its turn comes after those there are); False
        when it is full."""
        if key in self._order:
            return True
        if self.full:
            return False
        # joins just before the next one to be dealt to: last in this round
        self._order.insert(self._next, key)
        self._next += 1
        return True

    def remove(self, key: str) -> None:
        """``key`` has no deferred events left (as far as this dispatcher knows)."""
        if key not in self._order:
            return
        i = self._order.index(key)
        del self._order[i]
        if i < self._next:
            self._next -= 1
        if self._next >= len(self._order):
            self._next = 0

    def deal(self, held: Mapping[str, int], open_: Mapping[str, bool]) -> dict[str, int]:
        """How many more events to ask for now, by destination: the places left of
        ``total`` once ``held`` (by destination: events being handled or asked for), one at
        a time in turn from where the last deal stopped, each destination up to ``share``.
        A destination whose ``open_`` request has not ended yet can take no more now."""
        free = self.total - sum(held.get(k, 0) for k in self._order)
        room = {k: 0 if open_.get(k) else max(0, self.share - held.get(k, 0)) for k in self._order}
        dealt: dict[str, int] = {}
        n = len(self._order)
        i = self._next
        while free > 0 and any(room.values()):
            key = self._order[i % n]
            if room[key]:
                room[key] -= 1
                dealt[key] = dealt.get(key, 0) + 1
                free -= 1
                self._next = (i + 1) % n
            i += 1
        return dealt
