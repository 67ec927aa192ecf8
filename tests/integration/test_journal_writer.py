"""The journal writer of an attempt that lost its job writes nothing more: not even the
end of a session whose worker that attempt killed itself (a cancellation that came as the
conversation finished is not always delivered, and the fence alone refuses a stale write
only once another attempt wrote)."""

from __future__ import annotations

import pytest
from akcore import bus, ids, journal
from akcore.datakey import Keyring
from akcore.journalio import Fenced, JournalWriter, read_journal
from cryptography.fernet import Fernet


async def test_nothing_is_written_once_the_attempt_lost_its_job(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "t")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js)
        session_id = ids.new_id("ses")
        holds = [True]
        keys = Keyring([Fernet.generate_key()])
        writer = JournalWriter(js, bus.publisher(nc), keys, session_id, 0, 1, lambda: holds[0])
        await writer.append(journal.Started(runner="r", attempt=1))
        holds[0] = False  # the lease lapsed
        ended = journal.Ended(state="ERROR", error="worker process exited with code -9")
        with pytest.raises(Fenced, match="lost its job"):
            await writer.append(ended, final=True)
        with pytest.raises(Fenced):  # and it stays fenced
            await writer.append(journal.Started(runner="r", attempt=1))
        read = await read_journal(js, session_id, keys)
        assert [r.kind for r in read.records] == [journal.Kind.STARTED]
    finally:
        await nc.close()
