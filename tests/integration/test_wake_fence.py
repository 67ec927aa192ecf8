"""A wake job whose attempt was fenced at a write is dropped only when another job message
of the session wrote the journal: a second delivery of the same message runs the session,
and acking it would leave nothing to bring the session back if that attempt's runner died."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from ak_runner.lease import Lease
from ak_runner.service import _overtaken_by_another_job
from akcore import bus, ids, journal, wire
from akcore.datakey import Keyring
from akcore.journalio import JournalWriter
from cryptography.fernet import Fernet
from nats.errors import TimeoutError as NatsTimeout


async def _woken_twice(nc: Any) -> tuple[Any, Keyring, wire.Job]:
    """A session's journal: attempt 1 (job message 40) parked, then attempt 2 of wake job
    message 41 started; and a wake job of that parking."""
    js = nc.jetstream()
    await bus.ensure_streams(js)
    keys = Keyring([Fernet.generate_key()])
    sid = ids.new_id("ses")
    job = wire.Job(sid, "prj", "dep", "bld", "f.py:h", True, None, None, {}, parked_seq=3)
    writer = JournalWriter(js, bus.publisher(nc), keys, sid, 0, 1)
    await writer.append(journal.Started(runner="r1", attempt=1, job_seq=40))
    await writer.append(journal.Parked(step=1, reason="sleep"))
    await writer.append(journal.Started(runner="r2", attempt=2, job_seq=41))
    return js, keys, job


def _delivery(stream_seq: int, valid: bool = True, taken: bool = False) -> tuple[object, object]:
    msg = types.SimpleNamespace(
        metadata=types.SimpleNamespace(sequence=types.SimpleNamespace(stream=stream_seq))
    )
    lease = types.SimpleNamespace(valid=lambda: valid, taken=taken)
    return msg, lease


async def test_a_fenced_wake_job_is_dropped_only_for_another_job_message(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")
    try:
        js, keys, job = await _woken_twice(nc)
        host = types.SimpleNamespace(js=js, keys=keys)

        async def dropped(stream_seq: int, valid: bool = True, taken: bool = False) -> bool:
            msg, lease = _delivery(stream_seq, valid, taken)
            return await _overtaken_by_another_job(host, msg, job, lease)  # type: ignore[arg-type]

        assert not await dropped(41)  # another delivery of the message that runs it: kept
        assert await dropped(42)  # another wake job of the same parking: dropped
        assert await dropped(41, taken=True)  # (the watch told: another message)
        assert not await dropped(42, valid=False)  # its hold lapsed: left alone, as always
    finally:
        await nc.close()


class _SlowJs:
    """JetStream whose reads of the journal answer (or fail) only once ``lease`` lapsed: a
    NATS node slow as the fenced attempt reads its journal, its heartbeats stopped."""

    def __init__(self, js: Any, lease: Lease, fail: bool) -> None:
        self._js, self._lease, self._fail = js, lease, fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def get_last_msg(self, *args: Any, **kwargs: Any) -> Any:
        while self._lease.valid():  # (answers once the hold lapsed)
            await asyncio.sleep(0.05)
        if self._fail:
            raise NatsTimeout
        return await self._js.get_last_msg(*args, **kwargs)


async def test_a_wake_job_whose_hold_lapsed_during_the_read_is_left_alone(nats_url: str) -> None:
    """The journal is read after the attempt ended, heartbeats stopped: a hold that lapsed
    meanwhile (the job may be another delivery's by then) is not acked, whatever the read
    said or if it failed."""
    nc = await bus.connect(nats_url, "t")
    try:
        js, keys, job = await _woken_twice(nc)
        msg, _ = _delivery(42)  # another wake job wrote: dropped, were it still held
        for fail in (False, True):
            lease = Lease(msg, 1.0, asyncio.get_running_loop().time(), job.session_id)  # type: ignore[arg-type]
            host = types.SimpleNamespace(js=_SlowJs(js, lease, fail), keys=keys)
            assert not await _overtaken_by_another_job(host, msg, job, lease)  # type: ignore[arg-type]
            assert not lease.valid()
    finally:
        await nc.close()
