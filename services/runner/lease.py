"""An attempt's hold on its job: valid while JetStream confirms its heartbeats in time.

JetStream gives a held job to another runner once ``ack_wait`` passes without an ack or an
in-progress heartbeat. The server's deadline is at least ``ack_wait`` after the moment a
heartbeat was sent (or after the pull request that delivered the job was sent), so an
attempt may trust its hold until half of that: past it (a stalled event loop, a lost
connection, a frozen process) the lease is lost for good, and the attempt stops without
acking, naking or heartbeating again. Heartbeats are requests, so a sent one is known to
have reached the server; one sent after the lease was lost never renews it, because by then
the job may be another runner's (JetStream applies a heartbeat to the message, whichever
delivery sent it).

JetStream delivers at least once, not to one holder at a time: in a cluster, a consumer
leader change can deliver a job again while the heartbeats of its holder are still being
confirmed. The lease cannot see that; the journal can: an attempt that sees another one
write its session's journal (``journalio.JournalWatch``) gives its lease up as ``taken``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg

log = logging.getLogger(__name__)

ACK_PROGRESS = b"+WPI"

# How long before the lease's end a go-ahead given in advance ends (``grant_until``).
GRANT_MARGIN = 0.1


class Lease:
    """``valid()`` while the job is surely this attempt's; ``keep()`` heartbeats it."""

    def __init__(self, msg: Msg, ack_wait: float, since: float, session_id: str) -> None:
        """``since``: the loop time when the pull request that delivered ``msg`` was sent."""
        self.msg, self.ack_wait, self.session_id = msg, ack_wait, session_id
        self._loop = asyncio.get_running_loop()
        self.until = since + ack_wait / 2
        self.lost_because = ""
        self.lost = asyncio.Event()
        self.taken = False  # lost because another attempt wrote the session's journal
        self.beating = True  # the fault hook turns it off
        self.forgotten = False  # the fault hook: heartbeats not sent, taken as confirmed

    def valid(self) -> bool:
        if self.lost.is_set():
            return False
        now = self._loop.time()
        if now > self.until:
            self.lose(f"no heartbeat confirmed for {now - self.until + self.ack_wait / 2:.1f}s")
            return False
        return True

    def grant_until(self, longest: float) -> float:
        """A ``time.monotonic()`` deadline, at most ``longest`` from now and ``GRANT_MARGIN``
        before the lease's end, before which the worker may start its next activity without
        asking (0.0: none). The clock is read here, not through the loop: the loop's time
        never runs ahead of it (asyncio reads it; libuv keeps the same clock in whole
        milliseconds, cut down, and may hand out a reading taken before a stall), so the
        lease, judged by the loop's time, is still valid at the grant's end, and a runner
        whose loop stalled past the lease's end gives none."""
        if self.lost.is_set():
            return 0.0
        now = time.monotonic()
        left = min(longest, self.until - now - GRANT_MARGIN)
        return now + left if left > 0 else 0.0

    def lose(self, why: str, taken: bool = False) -> None:
        """Lost for good; ``taken``: the job was still held, but another job of the session
        (not a delivery of the same message) writes its journal now."""
        if self.lost.is_set():
            return
        self.lost_because, self.taken = why, taken
        self.lost.set()

    async def keep(self) -> None:
        """Heartbeats every sixth of the ack wait until the lease is lost or cancelled (the
        first one a sixth after the pull request: most sessions end before it). A cancel
        that comes as a heartbeat's answer does is not lost (``akcore.waitfor``, which the
        runner has installed: else the job would be heartbeated for ever)."""
        every = self.ack_wait / 6
        me = asyncio.current_task()
        await asyncio.sleep(max(0.0, self.until - self.ack_wait / 2 + every - self._loop.time()))
        while self.valid():
            sent = self._loop.time()
            if self.beating and await self._beat(every):
                if self.valid():  # never revive a lease that was lost meanwhile
                    self.until = max(self.until, sent + self.ack_wait / 2)
            if me is not None and me.cancelling():
                # Cancelled while the heartbeat's publish waited for the client's buffer to
                # flush: nats-py swallows that cancel. Heartbeating on, it would keep a job
                # naked after its attempt from coming back for as long as the runner runs
                # (a heartbeat after a nak puts its redelivery off to the whole ack wait).
                return
            await asyncio.sleep(max(0.0, sent + every - self._loop.time()))

    async def _beat(self, every: float) -> bool:
        """One heartbeat; whether the server confirmed it."""
        if self.forgotten:
            return True
        try:
            await self.msg._client.request(self.msg.reply, ACK_PROGRESS, timeout=max(every, 0.5))
        except Exception as e:  # it counts only when the server answers
            log.debug("session %s: heartbeat not confirmed: %r", self.session_id, e)
            return False
        return True
