"""A live session's inbox: events, signals and stop requests sent to ``ak.inbox.<session>``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from akcore import subjects, wire
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

log = logging.getLogger(__name__)

Key = Callable[[wire.InboxMessage], str | None]


class Inbox:
    """Buffers the session's inbox in arrival order, skipping what earlier attempts took."""

    def __init__(
        self,
        js: JetStreamContext,
        session_id: str,
        consumed: set[int],
        on_stop: Callable[[str], None],
    ) -> None:
        self.js, self.session_id, self.consumed, self.on_stop = js, session_id, consumed, on_stop
        self.buffer: list[tuple[int, wire.InboxMessage]] = []
        self._changed = asyncio.Event()
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self) -> None:
        self._sub = await self.js.subscribe(
            subjects.inbox_subject(self.session_id),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._on_msg,
        )

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as e:
                log.debug("inbox unsubscribe: %s", e)

    async def _on_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq in self.consumed:
            return
        try:
            item = wire.decode(wire.InboxMessage, msg.data)
        except Exception as e:
            log.error("session %s: dropping malformed inbox message: %s", self.session_id, e)
            return
        if item.kind == wire.INBOX_STOP:
            self.on_stop(item.reason)
            return
        self.buffer.append((seq, item))
        self._changed.set()

    async def take(
        self, wanted: list[str], key: Key, timeout: float | None
    ) -> tuple[int, wire.InboxMessage] | None:
        """The oldest message whose ``key`` is ``wanted[0]``, else ``wanted[1]``, ...; waits
        up to ``timeout`` seconds (None: forever) for one to arrive."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            for w in wanted:
                for i, (seq, item) in enumerate(self.buffer):
                    if key(item) == w:
                        del self.buffer[i]
                        self.consumed.add(seq)
                        return seq, item
            self._changed.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return None
