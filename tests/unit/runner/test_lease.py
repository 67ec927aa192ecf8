"""The lease of a job: valid for half the ack wait after the last confirmed heartbeat (or
the pull request that delivered the job), lost for good once it lapses."""

from __future__ import annotations

import asyncio
from typing import Any

from ak_runner.lease import Lease


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
