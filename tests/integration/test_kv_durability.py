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
import signal
from pathlib import Path
from typing import Any

from ak_runner.parking import Parking
from ak_runner.values import Values
from akcore import bus, natsauth, natsserver, subjects
from akcore.datakey import Keyring
from akcore.parking import Entry
from cryptography.fernet import Fernet
from nats.js.errors import KeyDeletedError, KeyNotFoundError

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


def test_deleted_values_stay_deleted_across_kills(tmp_path: Path) -> None:
    """Each round sets new keys (one of them twice) and deletes the last round's, then
    nats-server is killed."""
    server = Server(tmp_path / "nats")

    async def round_(r: int) -> None:
        nc = await _connected(server.url)
        values = Values(await bus.values_bucket(nc.jetstream()), "prj_a", KEYS)
        for i in range(8):
            await values.apply(f"r{r}k{i}", "set", ["old"])
            await values.apply(f"r{r}k{i}", "set", [f"v{r}"])
        for i in range(8):
            if r:
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

    try:
        for r in range(ROUNDS):
            asyncio.run(round_(r))
            server.kill()
        found = asyncio.run(read())
    finally:
        server.stop()
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

    try:
        for r in range(ROUNDS):
            asyncio.run(round_(r))
            server.kill()
        there = asyncio.run(left())
    finally:
        server.stop()
    assert there == [f"ses_r{ROUNDS - 1}k{i}" for i in range(8)]


def test_buckets_of_an_earlier_version_keep_more_versions_once_the_store_starts(
    tmp_path: Path,
) -> None:
    """Buckets made by an earlier version kept one version of a key: the store's start
    (``ensure_streams``) raises that, and the keys they hold stay."""
    from nats.js.api import KeyValueConfig

    server = Server(tmp_path / "nats")

    async def main() -> list[int]:
        nc = await bus.connect(server.url, "kv-durability-test")
        js = nc.jetstream()
        old = await js.create_key_value(KeyValueConfig(bucket=subjects.BUCKET_PARKED, history=1))
        await old.put("ses_kept", b"x")
        await bus.ensure_streams(js)
        kept = (await (await js.key_value(subjects.BUCKET_PARKED)).get("ses_kept")).value
        assert kept == b"x"
        limits = [
            (await js.stream_info(f"KV_{b}")).config.max_msgs_per_subject or 0
            for b in natsauth.BUCKETS
        ]
        await nc.close()
        return limits

    try:
        assert asyncio.run(main()) == [bus.KV_HISTORY] * len(natsauth.BUCKETS)
    finally:
        server.stop()
