"""A wake job whose attempt was fenced at a write is dropped only when another job message
of the session wrote the journal: a second delivery of the same message runs the session,
and acking it would leave nothing to bring the session back if that attempt's runner died."""

from __future__ import annotations

import types

from ak_runner.service import _overtaken_by_another_job
from akcore import bus, ids, journal, wire
from akcore.datakey import Keyring
from akcore.journalio import JournalWriter
from cryptography.fernet import Fernet


def _delivery(stream_seq: int, valid: bool = True, taken: bool = False) -> tuple[object, object]:
    msg = types.SimpleNamespace(
        metadata=types.SimpleNamespace(sequence=types.SimpleNamespace(stream=stream_seq))
    )
    lease = types.SimpleNamespace(valid=lambda: valid, taken=taken)
    return msg, lease


async def test_a_fenced_wake_job_is_dropped_only_for_another_job_message(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js)
        keys = Keyring([Fernet.generate_key()])
        host = types.SimpleNamespace(js=js, keys=keys)
        sid = ids.new_id("ses")
        job = wire.Job(sid, "prj", "dep", "bld", "f.py:h", True, None, None, {}, parked_seq=3)
        writer = JournalWriter(js, bus.publisher(nc), keys, sid, 0, 1)
        await writer.append(journal.Started(runner="r1", attempt=1, job_seq=40))
        await writer.append(journal.Parked(step=1, reason="sleep"))
        await writer.append(journal.Started(runner="r2", attempt=2, job_seq=41))

        async def dropped(stream_seq: int, valid: bool = True, taken: bool = False) -> bool:
            msg, lease = _delivery(stream_seq, valid, taken)
            return await _overtaken_by_another_job(host, msg, job, lease)  # type: ignore[arg-type]

        assert not await dropped(41)  # another delivery of the message that runs it: kept
        assert await dropped(42)  # another wake job of the same parking: dropped
        assert await dropped(41, taken=True)  # (the watch told: another message)
        assert not await dropped(42, valid=False)  # its hold lapsed: left alone, as always
    finally:
        await nc.close()
