"""The runner's side of parking: putting a parked session's entry in ``AK_PARKED``."""

from __future__ import annotations

import logging
from typing import Any

from akcore import bus, subjects
from akcore.parking import Entry
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

log = logging.getLogger(__name__)


class Parking:
    """``after``: seconds a session waits before it parks (0: it never does)."""

    TRIES = 5  # writes of an entry whose key changes meanwhile, before the attempt fails

    def __init__(self, js: JetStreamContext, after: float) -> None:
        self.js, self.after = js, after
        self._kv: Any = None

    async def bucket(self) -> Any:
        if self._kv is None:
            self._kv = await self.js.key_value(subjects.BUCKET_PARKED)
        return self._kv

    async def register(self, session_id: str, entry: Entry) -> None:
        """Puts the entry: from now on a waker wakes the session. Never over the entry of
        a later parking (a runner that froze while parking, thawed after the session had
        been woken and parked again, would leave the later parking with no entry)."""
        await self.ensure(session_id, entry)

    async def ensure(self, session_id: str, entry: Entry) -> None:
        """Puts the entry unless the session has one (its parking attempt may have put it
        before it stopped); an entry already woken is put again, which at worst wakes the
        session once more (its stale wake job is dropped)."""
        kv = await self.bucket()
        for _ in range(self.TRIES):
            try:
                try:
                    found = await kv.get(session_id)
                except (KeyNotFoundError, KeyDeletedError):
                    await kv.create(session_id, entry.encode())
                    await bus.keep_latest(self.js, subjects.BUCKET_PARKED, session_id)
                    return
                try:
                    older = Entry.decode(found.value or b"").parked_seq < entry.parked_seq
                except ValueError:
                    older = True
                if older:  # an entry of an earlier parking that no waker woke (yet)
                    await kv.update(session_id, entry.encode(), last=found.revision)
                    await bus.keep_latest(self.js, subjects.BUCKET_PARKED, session_id)
                return
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                # The key changed as it was written: put meanwhile (by its parking attempt),
                # or a waker purged the delete marker that create was about to write over
                # (create then fails as if the key had been put). Look again: taking either
                # for "put" would leave a parked session with no entry, woken by nothing.
                log.debug("session %s: its parked entry changed meanwhile; again", session_id)
        raise RuntimeError(f"session {session_id}: its parked entry kept changing as it was put")
