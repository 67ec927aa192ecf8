"""The lease of a job: valid for half the ack wait after the last confirmed heartbeat (or
the pull request that delivered the job), lost for good once it lapses."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from ak_runner.lease import GRANT_MARGIN, Lease


class FakeMsg:
    """The two things a lease uses of a message: its reply subject and its client."""

    def __init__(self, client: Any) -> None:
        self.reply, self._client = "$JS.ACK.x", client


class Client:
    def __init__(self, answer: bool) -> None:
        self.answer, self.sent = answer, 0

    async def request(self, subject: str, data: bytes, timeout: float) -> None:
        self.sent += 1
        if not self.answer:
            raise TimeoutError


async def test_a_job_delivered_after_a_stall_has_no_lease() -> None:
    loop = asyncio.get_running_loop()
    lease = Lease(FakeMsg(Client(True)), 4.0, loop.time() - 2.5, "ses_1")  # type: ignore[arg-type]
    assert not lease.valid()
    assert lease.lost.is_set() and "no heartbeat confirmed" in lease.lost_because


async def test_confirmed_heartbeats_keep_it_and_unanswered_ones_lose_it() -> None:
    loop = asyncio.get_running_loop()
    ok = Client(True)
    lease = Lease(FakeMsg(ok), 3.0, loop.time(), "ses_1")  # type: ignore[arg-type]
    first = lease.until
    keeping = asyncio.create_task(lease.keep())
    async with asyncio.timeout(10):
        while ok.sent < 2:  # a heartbeat sent after the first, and answered
            await asyncio.sleep(0.05)
    assert lease.valid() and lease.until > first  # renewed from its heartbeats
    ok.answer = False
    async with asyncio.timeout(10):
        await lease.lost.wait()  # no answer for half the ack wait
    await asyncio.wait_for(keeping, 5)  # and then it heartbeats no more
    assert not lease.valid()


async def test_a_lease_lost_stays_lost_when_a_late_answer_comes() -> None:
    loop = asyncio.get_running_loop()
    lease = Lease(FakeMsg(Client(True)), 1.0, loop.time(), "ses_1")  # type: ignore[arg-type]
    lease.until = loop.time() - 0.01
    assert not lease.valid()
    lease.until = loop.time() + 10  # as a heartbeat answered after the loss would
    assert not lease.valid()


async def test_a_go_ahead_in_advance_ends_before_the_lease() -> None:
    """It is in ``time.monotonic()`` (the worker's clock too), at most ``longest`` long,
    and ends GRANT_MARGIN before the lease could: none once that has passed, or the lease
    is lost."""
    loop = asyncio.get_running_loop()
    lease = Lease(FakeMsg(Client(True)), 10.0, loop.time(), "ses_1")  # type: ignore[arg-type]
    before = time.monotonic()
    assert before + 1.0 <= lease.grant_until(1.0) <= time.monotonic() + 1.0
    assert lease.grant_until(60.0) == pytest.approx(lease.until - GRANT_MARGIN, abs=1e-6)
    assert lease.grant_until(60.0) < lease.until
    lease.until = time.monotonic() + GRANT_MARGIN / 2  # valid, but too close to its end
    assert lease.valid() and lease.grant_until(1.0) == 0.0
    lease.until = time.monotonic() + 10
    lease.lose("test")
    assert lease.grant_until(1.0) == 0.0


async def test_heartbeats_stop_when_cancelled_as_an_answer_arrives() -> None:
    """handle_job cancels the heartbeats when the attempt ends. nats-py waits for a
    heartbeat's answer with asyncio.wait_for, which on Python 3.11 drops a cancellation that
    comes in the turn the answer arrived: heartbeats must stop all the same (else the job,
    heartbeated for ever, is never delivered again)."""
    from nats.aio.client import Client as Nats
    from nats.aio.msg import Msg

    prefix = "_INBOX.t."
    nc = Nats()  # not connected: only nats-py's request path runs, its publish recorded
    nc._resp_sub_prefix = bytearray(prefix.encode())
    replies: list[str] = []
    sent = asyncio.Event()

    async def publish(
        subject: str, payload: bytes = b"", reply: str = "", headers: Any = None
    ) -> None:
        replies.append(reply)
        sent.set()

    nc.publish = publish  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    lease = Lease(FakeMsg(nc), 0.6, loop.time(), "ses_1")  # type: ignore[arg-type]
    beat = asyncio.create_task(lease.keep())
    await sent.wait()  # a heartbeat waits for its answer
    sent.clear()
    count = len(replies)
    nc._resp_map[replies[-1].removeprefix(prefix)].set_result(Msg(nc, subject=replies[-1]))
    beat.cancel()  # in the same turn
    more = asyncio.create_task(sent.wait())
    await asyncio.wait({beat, more}, return_when=asyncio.FIRST_COMPLETED)  # whichever comes
    more.cancel()
    assert beat.done() and beat.cancelled()
    assert len(replies) == count  # no heartbeat after the cancel


class Swallowing(Client):
    """As nats-py's client whose buffer is over its limit: a publish waits for the buffer
    to flush, and swallows a cancel that comes meanwhile (``Client._flush_pending``)."""

    def __init__(self) -> None:
        super().__init__(True)
        self.waiting = asyncio.Event()

    async def request(self, subject: str, data: bytes, timeout: float) -> None:
        self.sent += 1
        if self.sent == 1:
            self.waiting.set()
            try:
                await asyncio.Event().wait()  # (a flush that does not come)
            except asyncio.CancelledError:
                pass


async def test_a_cancel_swallowed_by_the_client_still_stops_the_heartbeats() -> None:
    """The attempt ended and stopped heartbeating its job while a heartbeat waited for the
    client's buffer to flush; nats-py swallowed the cancel. The heartbeats stop all the
    same (sent on, each would put the redelivery of a job naked after the attempt off to
    the whole ack wait: it would never come back while the runner runs)."""
    loop = asyncio.get_running_loop()
    client = Swallowing()
    lease = Lease(FakeMsg(client), 0.6, loop.time(), "ses_1")  # type: ignore[arg-type]
    keeping = asyncio.create_task(lease.keep())
    await asyncio.wait_for(client.waiting.wait(), 10)
    keeping.cancel()
    await asyncio.wait_for(asyncio.shield(keeping), 5)  # it ends (before: heartbeats for ever)
    assert client.sent == 1
