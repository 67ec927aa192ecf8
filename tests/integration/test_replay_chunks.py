"""Replay chunks (akcore.chunks): a long journal is read back from a few chunk messages and
the journal's records after them, with the same records as read one by one; a chunk that is
damaged, foreign, out of place or missing is not used, and the reader gets the journal's
records all the same."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import nats.errors
import pytest
from akcore import bus, chunks, ids, journal, natsserver, subjects, wire
from akcore.chunks import Chunker
from akcore.datakey import Keyring
from akcore.journalio import JournalWriter, read_journal
from cryptography.fernet import Fernet
from nats.aio.client import Client

KEYS = Keyring([Fernet.generate_key()])
SIZE = 16  # records per chunk in these tests


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    nc = await bus.connect(nats_url, "t")
    await bus.ensure_streams(nc.jetstream())
    with mock.patch("akcore.chunks.CHUNK_RECORDS", SIZE):
        yield nc
    await nc.close()


def _created() -> journal.Created:
    return journal.Created(
        project_id="prj_1", deployment_id="dep_1", build_id="bld_1", entrypoint="h.py:f"
    )


def _step(n: int) -> journal.Activity:
    return journal.Activity(step=n, function="noop", ok=True, result=pickle.dumps(n), digest="d")


async def _journal(nc: Client, sid: str, steps: int) -> JournalWriter:
    """A first attempt's journal: `created`, `started`, then ``steps`` activities."""
    js, pub = nc.jetstream(), bus.publisher(nc)
    await JournalWriter(js, pub, KEYS, sid, 0, 0).append(_created())  # (as the dispatcher)
    writer = JournalWriter(js, pub, KEYS, sid, 0, 1, chunker=Chunker(pub, KEYS, sid))
    created = await js.get_last_msg(subjects.STREAM_JOURNAL, subjects.journal_subject(sid))
    writer.located(created.seq or 0, created.data or b"")
    await writer.append(journal.Started(runner="r", attempt=1))
    for n in range(1, steps + 1):
        await writer.append(_step(n))
    await _published()
    return writer


async def _published() -> None:
    await asyncio.gather(*chunks._PUBLISHING, return_exceptions=True)


async def _chunk_messages(nc: Client, sid: str) -> int:
    info = await nc.jetstream().stream_info(
        subjects.STREAM_REPLAY, subjects_filter=subjects.replay_subject(sid)
    )
    return sum((info.state.subjects or {}).values())


def _same(a: list[wire.JournalRecord], b: list[wire.JournalRecord]) -> None:
    assert [(r.seq, r.kind, r.data) for r in a] == [(r.seq, r.kind, r.data) for r in b]


async def test_a_long_journal_is_read_from_its_chunks_and_the_records_after_them(
    nc: Client,
) -> None:
    js, sid = nc.jetstream(), ids.new_id("ses")
    await _journal(nc, sid, 100)  # 102 records: 6 chunks of 16, 6 records after them
    assert await _chunk_messages(nc, sid) == 6
    plain = await read_journal(js, sid, KEYS, use_chunks=False)
    read = await read_journal(js, sid, KEYS)
    _same(read.records, plain.records)
    assert len(read.records) == 102 and read.chunked == 96
    assert (read.last, read.size) == (plain.last, plain.size)
    assert [rec.seq for _, _, rec in read.unchunked] == list(range(96, 102))
    history = journal.fold(read.records)
    assert sorted(history.steps) == list(range(1, 101))
    assert pickle.loads(history.steps[100].result) == 100  # type: ignore[union-attr]


async def test_a_replay_attempt_chunks_on_where_the_chunks_ended(nc: Client) -> None:
    js, sid = nc.jetstream(), ids.new_id("ses")
    await _journal(nc, sid, 40)  # 42 records: 2 chunks, 10 after them
    read = await read_journal(js, sid, KEYS)
    assert read.chunked == 32
    pub = bus.publisher(nc)
    chunker = Chunker(pub, KEYS, sid, read.chunked, read.unchunked)
    writer = JournalWriter(js, pub, KEYS, sid, read.last, 42, chunker=chunker)
    await writer.append(journal.Started(runner="r", attempt=2))
    for n in range(41, 61):
        await writer.append(_step(n))
    await _published()
    again = await read_journal(js, sid, KEYS)
    _same(again.records, (await read_journal(js, sid, KEYS, use_chunks=False)).records)
    assert len(again.records) == 63 and again.chunked == 48


async def test_chunks_that_do_not_fit_are_left_unread(nc: Client) -> None:
    """Garbage, another session's chunk, a chunk sealed with another key, one that was
    altered, one after a gap, one claiming records past the journal's end, one whose
    records are not the ones it says: none is used, and the records read are the
    journal's. A good chunk among them is used."""
    js, pub = nc.jetstream(), bus.publisher(nc)
    sid, other = ids.new_id("ses"), ids.new_id("ses")
    with mock.patch("akcore.chunks.CHUNK_RECORDS", 10**6):  # no chunks of their own
        await _journal(nc, sid, 30)
        await _journal(nc, other, 30)
    plain = await read_journal(js, sid, KEYS, use_chunks=False)
    mine = plain.unchunked
    theirs = (await read_journal(js, other, KEYS)).unchunked
    good = chunks.seal(chunks.Chunk(0, mine[:SIZE]), sid, KEYS)
    altered = bytearray(good)
    altered[-5] ^= 0xFF
    forger = Keyring([Fernet.generate_key()])
    ahead = [(s + 10_000, n, r) for s, n, r in mine[:SIZE]]
    for data in (
        b"\xc1 not msgpack",
        chunks.seal(chunks.Chunk(0, theirs[:SIZE]), other, KEYS),
        chunks.seal(chunks.Chunk(0, mine[:SIZE]), sid, forger),
        bytes(altered),
        chunks.seal(chunks.Chunk(SIZE, mine[SIZE : 2 * SIZE]), sid, KEYS),  # (no chunk 0)
        chunks.seal(chunks.Chunk(0, ahead), sid, KEYS),
        chunks.seal(chunks.Chunk(0, mine[1 : SIZE + 1]), sid, KEYS),  # (1.. said to be 0..)
    ):
        await pub.publish(subjects.replay_subject(sid), data)
    read = await read_journal(js, sid, KEYS)
    _same(read.records, plain.records)
    assert read.chunked == 0
    await pub.publish(subjects.replay_subject(sid), good)
    read = await read_journal(js, sid, KEYS)
    _same(read.records, plain.records)
    assert read.chunked == 2 * SIZE  # the good chunk 0, then the one of records 16..31


async def test_chunks_that_do_not_join_the_journal_are_not_used(nc: Client) -> None:
    """A chunk whose last record is not followed, in the journal, by the next record
    number (a journal that took another path): everything is read from the journal."""
    js, pub, sid = nc.jetstream(), bus.publisher(nc), ids.new_id("ses")
    with mock.patch("akcore.chunks.CHUNK_RECORDS", 10**6):
        await _journal(nc, sid, 30)
    plain = await read_journal(js, sid, KEYS, use_chunks=False)
    # Records 0..15, the last one said to be at the stream sequence of record 16: the
    # journal's record after that one is 17, not the 16 the chunk says comes next.
    (_, n15, r15), (s16, _, _) = plain.unchunked[15], plain.unchunked[16]
    skewed = [*plain.unchunked[:15], (s16, n15, r15)]
    chunk = chunks.seal(chunks.Chunk(0, skewed), sid, KEYS)
    await pub.publish(subjects.replay_subject(sid), chunk)
    read = await read_journal(js, sid, KEYS)
    _same(read.records, plain.records)
    assert read.chunked == 0


async def test_a_fenced_writer_writes_no_more_chunks(nc: Client) -> None:
    js, sid = nc.jetstream(), ids.new_id("ses")
    writer = await _journal(nc, sid, 10)
    other = JournalWriter(js, bus.publisher(nc), KEYS, sid, writer.last, writer.seq)
    await other.append(journal.Started(runner="r2", attempt=2))  # another attempt wrote
    with pytest.raises(Exception, match="another attempt"):
        for n in range(11, 40):
            await writer.append(_step(n))
    assert writer.chunker is not None and writer.chunker.off
    await _published()
    assert await _chunk_messages(nc, sid) == 0  # (12 records: fewer than one chunk)


async def test_chunks_purged_as_they_are_read_make_the_replay_wait_for_nothing(
    nc: Client,
) -> None:
    """The store's sweep purges an ended session's chunks whenever it likes: one that does
    so between the reader finding the newest chunk and reading them costs it no wait, and
    the records read are the journal's."""
    js, sid = nc.jetstream(), ids.new_id("ses")
    await _journal(nc, sid, 40)
    plain = await read_journal(js, sid, KEYS, use_chunks=False)
    found = js.get_last_msg

    async def then_purged(stream: str, subject: str) -> Any:
        msg = await found(stream, subject)
        if stream == subjects.STREAM_REPLAY:  # (as the sweep would, right then)
            await js.purge_stream(stream, subject=subject)
        return msg

    with (
        mock.patch.object(js, "get_last_msg", then_purged),
        mock.patch("akcore.journalio._chunks_unread_until", [0.0]),
    ):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        read = await read_journal(js, sid, KEYS, timeout=5.0)
        took = loop.time() - t0
    _same(read.records, plain.records)
    assert took < 2.0, f"the replay waited {took:.1f}s for chunks that were gone"


async def test_a_server_with_room_for_the_streams_of_before_still_takes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay chunks only save time: a JetStream server whose storage held the streams
    before them (events, jobs, journal, inbox: here 3 x 64 MiB) still lets the store
    create what it needs and start."""
    monkeypatch.setenv("AK_RETENTION__EVENTS_MAX_BYTES", "64MiB")
    monkeypatch.setenv("AK_RETENTION__JOURNAL_MAX_BYTES", "64MiB")
    proc, url = natsserver.start(tmp_path / "js", max_file_store="200MiB")
    try:
        nc = await bus.connect(url, "t")
        try:
            await bus.ensure_streams(nc.jetstream(), timeout=1.0)
            await asyncio.wait_for(bus.wait_streams(nc.jetstream(), "t"), 5)  # nobody waits
        finally:
            await nc.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_journal_shorter_than_a_chunk_is_read_without_looking_for_chunks(
    nc: Client,
) -> None:
    """(A parked session that wakes reads its journal each time: a short one is read at
    once, without a request for chunks it would hardly have.)"""
    js, pub, sid = nc.jetstream(), bus.publisher(nc), ids.new_id("ses")
    with mock.patch("akcore.chunks.CHUNK_RECORDS", 10**6):
        await _journal(nc, sid, SIZE - 4)  # SIZE - 2 records
    plain = await read_journal(js, sid, KEYS, use_chunks=False)
    chunk = chunks.Chunk(0, plain.unchunked[:8])  # (as a chunk by size would hold them)
    await pub.publish(subjects.replay_subject(sid), chunks.seal(chunk, sid, KEYS))
    looked = mock.AsyncMock(wraps=js.get_last_msg)
    with mock.patch.object(js, "get_last_msg", looked):
        read = await read_journal(js, sid, KEYS)
    _same(read.records, plain.records)
    assert read.chunked == 0
    assert [c.args[0] for c in looked.await_args_list] == [subjects.STREAM_JOURNAL]


async def test_without_the_replay_stream_sessions_journal_and_replay_as_before(
    nc: Client,
) -> None:
    """(AK_REPLAY is optional: its chunks are not stored, and a replay finds none at once.)"""
    js, sid = nc.jetstream(), ids.new_id("ses")
    await js.delete_stream(subjects.STREAM_REPLAY)
    await _journal(nc, sid, 100)
    t0 = asyncio.get_running_loop().time()
    read = await read_journal(js, sid, KEYS)
    took = asyncio.get_running_loop().time() - t0
    _same(read.records, (await read_journal(js, sid, KEYS, use_chunks=False)).records)
    assert len(read.records) == 102 and read.chunked == 0
    assert took < 1.0, f"the replay took {took:.1f}s without the replay stream"


async def test_a_replay_stream_not_made_for_a_passing_error_is_made_on_a_retry(
    nats_url: str,
) -> None:
    nc = await bus.connect(nats_url, "t")
    js = nc.jetstream()
    add, failed = js.add_stream, []

    async def add_once_timing_out(config: Any = None, **kw: Any) -> Any:
        if config is not None and config.name == subjects.STREAM_REPLAY and not failed:
            failed.append(config.name)
            raise nats.errors.TimeoutError
        return await add(config, **kw)

    try:
        with mock.patch.object(js, "add_stream", add_once_timing_out):
            await bus.ensure_streams(js)
        await js.stream_info(subjects.STREAM_REPLAY)
    finally:
        await nc.close()
