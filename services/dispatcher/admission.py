"""Which events wait in the dispatcher for their filters, and which it defers (pure: no I/O).

An event waiting for its filters keeps its place in the dispatcher's window and, un-acked,
in JetStream's (``max_ack_pending`` of the ``dispatcher`` consumer, which JetStream does not
move past). Both windows are shared by all events: a destination (trigger or connection)
whose filters are slow, sent thousands of events, would fill them with its own and hold up
every other project's. So an event of ``AK_EVENTS`` waits here only while its destination
has fewer than ``PER_DESTINATION`` events waiting and all destinations fewer than ``TOTAL``;
the dispatcher defers the others: it copies them to ``AK_DEFERRED`` and acks them, and takes
them from there, a few at a time, to be judged (``Admission`` only counts).

A destination that has events deferred defers its next ones too, until the dispatcher has
taken those back, so that its events are judged in the order they arrived.

Events without filters are deferred too once their destination has ``PER_DESTINATION``
events of ``AK_EVENTS`` in the dispatcher (``enter``): a flood of small webhooks to one
project (600 a second, more than the dispatcher starts sessions for on two cores) held
every other project's next event behind it in ``AK_EVENTS``, seconds more for every
minute it lasted. Deferred, they are read past at the rate JetStream stores copies, and
taken back in turns with the other destinations'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

PER_DESTINATION = 32  # events of one destination waiting for their filters
TOTAL = 512  # events of AK_EVENTS waiting for their filters
# Seconds between looks at AK_DEFERRED for a destination whose deferred events this
# dispatcher has not all taken back (another dispatcher may have: they share the stream).
LOOK_EVERY = 2.0


class Admission:
    """Counts the events waiting for their filters and those deferred, by destination."""

    def __init__(self, per_destination: int = PER_DESTINATION, total: int = TOTAL) -> None:
        self.per_destination, self.total = per_destination, total
        self.judging = 0  # events of AK_EVENTS waiting for their filters
        self._waiting: dict[str, int] = {}  # by destination, from either stream
        self._deferred: dict[str, int] = {}  # by destination: deferred, not taken back yet
        self._looked: dict[str, float] = {}  # by destination: when AK_DEFERRED was looked at
        self._busy: dict[str, int] = {}  # by destination: events of AK_EVENTS being handled

    def enter(self, key: str) -> bool:
        """Counts an event of ``key`` from ``AK_EVENTS`` taken to be handled (until
        ``leave``); True when ``PER_DESTINATION`` of them were being handled already: it is
        to be deferred, filters or not."""
        busy = self._busy.get(key, 0)
        self._busy[key] = busy + 1
        return busy >= self.per_destination

    def leave(self, key: str) -> None:
        busy = self._busy.get(key, 0) - 1
        if busy > 0:
            self._busy[key] = busy
        else:
            self._busy.pop(key, None)

    def has_deferred(self, key: str) -> bool:
        """Whether ``key`` has events this dispatcher deferred and has not taken back: its
        next ones are deferred too (in order), filters or not."""
        return bool(self._deferred.get(key))

    def admits(self, key: str) -> bool:
        """Whether an event of destination ``key`` from ``AK_EVENTS`` may wait here."""
        return not self._deferred.get(key) and self._has_room(key)

    def _has_room(self, key: str) -> bool:
        return self._waiting.get(key, 0) < self.per_destination and self.judging < self.total

    @contextlib.contextmanager
    def waiting(self, key: str, deferred: bool) -> Iterator[None]:
        """An event of ``key`` waits for its filters while the block runs; ``deferred``:
        it was taken from ``AK_DEFERRED`` (it does not count towards ``TOTAL``)."""
        self._waiting[key] = self._waiting.get(key, 0) + 1
        self.judging += not deferred
        try:
            yield
        finally:
            self.judging -= not deferred
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]

    def deferred(self, key: str) -> bool:
        """Counts an event of ``key`` deferred; True when it is the first one not yet
        taken back."""
        self._deferred[key] = self._deferred.get(key, 0) + 1
        return self._deferred[key] == 1

    def taken_back(self, key: str) -> None:
        """An event of ``key`` was taken from ``AK_DEFERRED`` (again, perhaps)."""
        left = self._deferred.get(key, 0) - 1
        if left > 0:
            self._deferred[key] = left
        else:
            self.gone(key)

    def should_look(self, key: str, now: float) -> bool:
        """Whether to look if ``AK_DEFERRED`` still holds events of ``key``: this
        dispatcher deferred some it has not taken back, the destination has room otherwise,
        and the last look was ``LOOK_EVERY`` seconds ago or more."""
        if not self._deferred.get(key) or not self._has_room(key):
            return False
        if now - self._looked.get(key, float("-inf")) < LOOK_EVERY:
            return False
        self._looked[key] = now
        return True

    def gone(self, key: str) -> None:
        """No event of ``key`` is left deferred: its next events may wait here again."""
        self._deferred.pop(key, None)
        self._looked.pop(key, None)
