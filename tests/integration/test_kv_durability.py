"""What a service deleted from a KV bucket stays deleted when nats-server is killed.

JetStream drops a key's version over its bucket's limit without writing that down (no
tombstone). A delete followed by a purge of the key's messages (what a deleted value and
a woken session's parked entry get, so that buckets do not fill with markers) then left
no later message of the key, and after nats-server was killed and restarted the dropped
version came back (nats-server 2.15): a value `del_value` had deleted, a parked entry a
restarted dispatcher woke again. Buckets now keep more versions than a key needs and each
write removes the earlier ones itself (``bus.keep_latest``). Found by a chaos review."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from ak_runner.parking import Parking
from ak_runner.values import Values
from akcore import bus, natsauth, natsserver, subjects
from akcore.datakey import Keyring
from akcore.parking import Entry
from cryptography.fernet import Fernet
from nats.js.errors import KeyDeletedError, KeyNotFoundError

from tests.conftest import connect_as, connect_user

T = TypeVar("T")
KEYS = Keyring([Fernet.generate_key()])
ROUNDS = 4


class Server:
    """A nats-server on one store directory and port, killed and started again."""

    def __init__(self, home: Path) -> None:
        self.home, self.port, self.proc, self.url = home, natsserver.free_port(), None, ""
        self.start()

    def start(self) -> None:
        self.proc, self.url = natsserver.start(self.home, self.port, sync="always")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.start()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait()


async def _connected(url: str) -> Any:
    nc = await bus.connect(url, "kv-durability-test")
    await bus.ensure_streams(nc.jetstream())
    return nc


def _across_kills(
    server: Server,
    round_: Callable[[int], Awaitable[None]],
    read: Callable[[], Awaitable[T]],
) -> T:
    """``round_`` run ``ROUNDS`` times, nats-server killed after each; then ``read``."""
    try:
        for r in range(ROUNDS):
            asyncio.run(round_(r))
            server.kill()
        return asyncio.run(read())
    finally:
        server.stop()


def test_deleted_values_stay_deleted_across_kills(tmp_path: Path) -> None:
    """Each round sets new keys (each twice) and deletes the last round's, then
    nats-server is killed."""
    server = Server(tmp_path / "nats")

    async def round_(r: int) -> None:
        nc = await _connected(server.url)
        values = Values(await bus.values_bucket(nc.jetstream()), "prj_a", KEYS)
        for i in range(8):
            await values.apply(f"r{r}k{i}", "set", ["old"])
            await values.apply(f"r{r}k{i}", "set", [f"v{r}"])
        for i in range(8 if r else 0):
            await values.apply(f"r{r - 1}k{i}", "del", [])
        await nc.close()

    async def read() -> dict[str, Any]:
        nc = await _connected(server.url)
        values = Values(await bus.values_bucket(nc.jetstream()), "prj_a", KEYS)
        found = {
            f"r{r}k{i}": await values.apply(f"r{r}k{i}", "get", [])
            for r in range(ROUNDS)
            for i in range(8)
        }
        await nc.close()
        return found

    found = _across_kills(server, round_, read)
    last = ROUNDS - 1
    assert {k: v for k, v in found.items() if v is not None} == {
        f"r{last}k{i}": f"v{last}" for i in range(8)
    }


def test_woken_parked_entries_stay_gone_across_kills(tmp_path: Path) -> None:
    """Each round parks new sessions (as a runner does) and wakes the last round's as a
    waker does (the entry deleted if still the one it read, then purged with its
    marker), then nats-server is killed."""
    server = Server(tmp_path / "nats")
    stream = f"KV_{subjects.BUCKET_PARKED}"

    async def round_(r: int) -> None:
        nc = await _connected(server.url)
        js = nc.jetstream()
        parking = Parking(js, 1.0)
        for i in range(8):
            entry = Entry(parked_seq=4, deadline_us=0, inbox_seq=0, job=b"")
            await parking.register(f"ses_r{r}k{i}", entry)
        kv = await parking.bucket()
        for i in range(8 if r else 0):
            subject = f"$KV.{subjects.BUCKET_PARKED}.ses_r{r - 1}k{i}"
            found = await kv.get(subject.rsplit(".", 1)[1])
            marker = await js.publish(  # kv.delete(key, last=...), its marker's number kept
                subject,
                headers={
                    "KV-Operation": "DEL",
                    "Nats-Expected-Last-Subject-Sequence": str(found.revision),
                },
            )
            await js.purge_stream(stream, seq=marker.seq + 1, subject=subject)
        await nc.close()

    async def left() -> list[str]:
        nc = await _connected(server.url)
        kv = await Parking(nc.jetstream(), 1.0).bucket()
        there = []
        for r in range(ROUNDS):
            for i in range(8):
                try:
                    await kv.get(f"ses_r{r}k{i}")
                    there.append(f"ses_r{r}k{i}")
                except (KeyNotFoundError, KeyDeletedError):
                    pass
        await nc.close()
        return there

    there = _across_kills(server, round_, left)
    assert there == [f"ses_r{ROUNDS - 1}k{i}" for i in range(8)]


def test_buckets_of_an_earlier_version_keep_more_versions_once_the_store_starts(
    nats_url: str,
) -> None:
    """Buckets made by an earlier version kept one version of a key: the store's start
    (``ensure_streams``, on the store's own NATS user) raises that, and the keys they hold
    stay. (The ``nats_url`` fixture fails the test on any permissions violation.)"""
    from nats.js.api import KeyValueConfig

    async def main() -> list[int]:
        admin = await bus.connect(nats_url, "kv-durability-test")
        js = admin.jetstream()
        for bucket in natsauth.BUCKETS:  # as the earlier version's store made them
            await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
        await (await js.key_value(subjects.BUCKET_PARKED)).put("ses_kept", b"x")
        store = await connect_as(nats_url, "store")
        await bus.ensure_streams(store.jetstream(), timeout=10.0)
        await store.close()
        kept = (await (await js.key_value(subjects.BUCKET_PARKED)).get("ses_kept")).value
        assert kept == b"x"
        limits = [
            (await js.stream_info(f"KV_{b}")).config.max_msgs_per_subject or 0
            for b in natsauth.BUCKETS
        ]
        await admin.close()
        return limits

    assert asyncio.run(main()) == [bus.KV_HISTORY] * len(natsauth.BUCKETS)


def test_a_refused_purge_is_said_once_and_not_tried_on_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A NATS server of one's own configured before runners could purge `KV_AK_PARKED`
    (a rolling upgrade): NATS answers the refused purge with silence. The runner says so
    once and does not try again on each write (each would wait for that silence)."""
    real = natsauth.permissions
    purge = f"{natsauth.API}.STREAM.PURGE.KV_{subjects.BUCKET_PARKED}"

    def before(service: str) -> natsauth.Permissions:
        p = real(service)
        return natsauth.Permissions(
            tuple(s for s in p.publish if s != purge), p.subscribe, p.deny_publish
        )

    monkeypatch.setattr(natsauth, "permissions", before)
    monkeypatch.setattr(bus, "_purges_paused", {})
    monkeypatch.setattr(bus, "_purge_said", set())
    runner_pw, admin_pw = natsauth.new_password(), natsauth.new_password()
    auth = natsauth.authorization_block(
        {"runner": json.dumps(runner_pw)}, {"test": json.dumps(admin_pw)}
    )
    proc, url = natsserver.start(tmp_path / "nats", auth=auth)
    asked: list[str] = []

    async def main() -> None:
        admin = await bus.connect(url.replace("//", f"//test:{admin_pw}@", 1), "test")
        await bus.ensure_streams(admin.jetstream())
        runner = await connect_user(url, "runner", runner_pw)
        request = runner.request

        async def counted(subject: str, *args: Any, **kw: Any) -> Any:
            if subject == purge:
                asked.append(subject)
            return await request(subject, *args, **kw)

        runner.request = counted  # type: ignore[method-assign]
        parking = Parking(runner.jetstream(), 1.0)
        for i in range(5):
            entry = Entry(parked_seq=4, deadline_us=0, inbox_seq=0, job=b"")
            await parking.register(f"ses_{i}", entry)
        await runner.close()
        await admin.close()

    try:
        with caplog.at_level(logging.WARNING, logger="akcore.bus"):
            asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait()
    assert len(asked) == 1  # the first write's; the next ones within the pause skip it
    said = [r.getMessage() for r in caplog.records if "could not be removed" in r.getMessage()]
    assert said == [
        f"bucket {subjects.BUCKET_PARKED}: the versions before a key's last one could not be "
        f"removed (no answer; not tried again for 60s); on a NATS server of your own, give "
        "the users what `ak nats-config` prints"
    ]
