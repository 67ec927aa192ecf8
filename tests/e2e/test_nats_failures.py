"""NATS failures with real processes: a restarted nats-server, and a three-node JetStream
cluster (R3 streams) losing a node under load. No acknowledged webhook may be lost."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from akcore import natsauth, natsserver

from tests.helpers import Stack, free_port, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: sturdy
  triggers:
    - name: hook
      webhook: {}
      call: h.py:on_hook
"""

CODE = """\
def on_hook(event):
    print("n", event.data.body.json["n"])
"""


def _wait_completed(stack: Stack, events: set[str], timeout: float) -> None:
    """Every event has exactly one session, and all of them completed."""
    mine = stack.sessions_of_events("sturdy", events, timeout)
    assert sorted(s["event_id"] for s in mine) == sorted(events)
    assert all(s["state"] == "COMPLETED" for s in mine)


def _wait_ready(stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while stack.request("GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline, stack.output()[-3000:]
        time.sleep(0.2)


def _accepted(stack: Stack, path: str, numbers: range) -> set[str]:
    """Posts a webhook for each number, each to be accepted (202); their event ids."""
    events = set()
    for n in numbers:
        status, event = stack.post_json(path, {"n": n})
        assert status == 202, stack.output()[-3000:]
        events.add(event)
    return events


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=15)


def test_services_reconnect_after_a_nats_restart(tmp_path: Path) -> None:
    """An operator's own NATS, with a user of its own that the settings name."""
    port = free_port()
    store = tmp_path / "nats"
    password = natsauth.new_password()
    auth = natsauth.authorization_block({}, {"ak": json.dumps(password)})
    nats, url = natsserver.start(store, port=port, log_file=tmp_path / "nats.log", auth=auth)
    try:
        stack = start_stack(
            tmp_path / "home",
            {"AK_NATS_URL": url, "AK_NATS__USER": "ak", "AK_NATS__PASSWORD": password},
        )
    except BaseException:
        _stop(nats)
        raise
    try:
        proj = write_project(tmp_path / "p", {"autokitteh.yaml": MANIFEST, "h.py": CODE})
        _, path = stack.deploy(proj)
        before = {stack.post_json(path, {"n": n})[1] for n in range(10)}
        _wait_completed(stack, before, timeout=30)

        _stop(nats)
        time.sleep(1)
        nats, _ = natsserver.start(store, port=port, log_file=tmp_path / "nats.log", auth=auth)
        _wait_ready(stack)
        after = _accepted(stack, path, range(10, 20))
        _wait_completed(stack, before | after, timeout=60)
        assert password not in stack.output()
    finally:
        stack.stop()
        _stop(nats)


def _embedded_nats(stack: Stack, not_pid: int = 0) -> int:
    """The pid of `ak up`'s own nats-server (other than ``not_pid``), once there is one."""
    running: list[int] = []

    def started() -> bool:
        running[:] = [p for p in stack.processes("nats-server") if p != not_pid]
        return bool(running)

    stack.wait_until(started, "a nats-server running under ak up", 30)
    return running[0]


def test_ak_up_restarts_its_embedded_nats_server(tmp_path: Path) -> None:
    """`ak up --mode dev` supervises its nats-server as it does the services: killed, it is
    reported and started again on the same port, the services reconnect, and what was
    accepted before runs once."""
    stack = start_stack(tmp_path)
    try:
        proj = write_project(tmp_path / "p", {"autokitteh.yaml": MANIFEST, "h.py": CODE})
        _, path = stack.deploy(proj)
        before = {stack.post_json(path, {"n": n})[1] for n in range(10)}
        old = _embedded_nats(stack)
        port = int(re.search(r"NATS:\s+nats://127.0.0.1:(\d+)", stack.output()).group(1))
        os.kill(old, signal.SIGKILL)
        _embedded_nats(stack, not_pid=old)
        assert re.search(
            r"nats-server killed by SIGKILL after [\d.]+s; restarting it now", stack.output()
        )
        conf = tmp_path / "data" / "autokitteh" / "nats" / "nats-server.conf"
        assert f'listen: "127.0.0.1:{port}"' in conf.read_text()  # where the services look
        _wait_ready(stack)
        after = _accepted(stack, path, range(10, 20))
        _wait_completed(stack, before | after, timeout=90)
    finally:
        code = stack.stop(nats_restarted=True)
    assert code == 0
    assert "[ak] stopped" in stack.output()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    routes = [free_port() for _ in range(3)]
    nodes = [
        natsserver.start(
            tmp_path / f"n{i}",
            log_file=tmp_path / f"n{i}.log",
            cluster=(f"n{i}", routes[i], [r for j, r in enumerate(routes) if j != i]),
        )
        for i in range(3)
    ]
    yield nodes
    for proc, _ in nodes:
        _stop(proc)


@pytest.mark.timeout(300)
def test_r3_cluster_loses_a_node_under_load(
    cluster: list[tuple[subprocess.Popen[bytes], str]], tmp_path: Path
) -> None:
    urls = ",".join(url for _, url in cluster)
    stack = start_stack(tmp_path / "home", {"AK_NATS_URL": urls, "AK_NATS__REPLICAS": "3"})
    try:
        proj = write_project(tmp_path / "p", {"autokitteh.yaml": MANIFEST, "h.py": CODE})
        _, path = stack.deploy(proj)
        acked: list[str] = []
        refused = 0
        killed_at: list[int] = []  # how many were acknowledged when the node died

        def load() -> None:
            nonlocal refused
            deadline = time.monotonic() + 60
            n = 0
            # Until 20 more are acknowledged after the kill: the cluster must recover.
            while not killed_at or len(acked) < killed_at[0] + 20:
                assert time.monotonic() < deadline, "the cluster did not recover"
                status, event = stack.post_json(path, {"n": n})
                n += 1
                if status == 202:
                    acked.append(event)
                else:
                    refused += 1  # not acknowledged (a leader election): the sender retries
                time.sleep(0.05)

        t = threading.Thread(target=load)
        t.start()
        while len(acked) < 20:
            time.sleep(0.01)
        killed_at.append(len(acked))
        _stop(cluster[2][0], signal.SIGKILL)
        t.join()
        assert len(acked) >= killed_at[0] + 20
        _wait_completed(stack, set(acked), timeout=120)
    finally:
        stack.stop()


@pytest.mark.timeout(120)
def test_writes_out_of_turn_on_a_clustered_stream_are_told_apart(
    cluster: list[tuple[subprocess.Popen[bytes], str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replicated stream's leader refuses a write out of turn with another error code
    (10164, no number in it) than one server does (10071): a second attempt's journal
    write is fenced, a session created again is a no-op, as on one server (in a compose
    run a runner took it for a failure and ended a session in ERROR)."""
    monkeypatch.setenv("AK_NATS__REPLICAS", "3")
    asyncio.run(_out_of_turn(",".join(url for _, url in cluster)))


async def _out_of_turn(urls: str) -> None:
    from akcore import bus, ids, journal, subjects, wire
    from akcore.datakey import Keyring
    from akcore.journalio import Fenced, JournalWriter
    from akcore.sessions import publish_session
    from cryptography.fernet import Fernet

    nc = await bus.connect(urls, "t")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js)
        keys, pub = Keyring([Fernet.generate_key()]), bus.publisher(nc)
        # Writes to one subject in flight together: the leader refuses all but the first,
        # with 10164 while the first is not applied yet, 10071 after.
        codes = set()
        for _ in range(5):
            subject = subjects.journal_subject(ids.new_id("ses"))
            headers = {subjects.HDR_EXPECTED_LAST_SUBJECT_SEQ: "0"}
            sent = [nc.request(subject, b"x", headers=headers, timeout=10) for _ in range(3)]
            answers = [json.loads(m.data) for m in await asyncio.gather(*sent)]
            codes |= {a["error"]["err_code"] for a in answers if "error" in a}
            assert sum("error" not in a for a in answers) == 1
        assert codes and codes <= bus.ERR_WRONG_LAST_SEQUENCE, codes
        # Two attempts of a session writing at once: one is stored, the other fenced.
        for _ in range(5):
            sid = ids.new_id("ses")
            created = journal.record(sid, 0, journal.Created("p", "d", "b", "a.py:f"), 1)
            first = await pub.publish(
                subjects.journal_subject(sid), wire.encode(journal.seal(created, keys))
            )
            writers = [
                JournalWriter(js, pub, keys, sid, int(first["seq"]), 1, lambda: True)
                for _ in range(2)
            ]
            outcomes = await asyncio.gather(
                *(
                    w.append(journal.Started(runner=f"r{i}", attempt=1))
                    for i, w in enumerate(writers)
                ),
                return_exceptions=True,
            )
            assert sorted(type(o).__name__ for o in outcomes) == ["Fenced", "int"], [
                (o, getattr(o, "err_code", None), getattr(o, "description", None)) for o in outcomes
            ]
            assert all(isinstance(o, (int, Fenced)) for o in outcomes)
        # A session's first messages published again at once add nothing and fail nothing.
        job = wire.Job(ids.new_id("ses"), "p", "d", "b", "a.py:f", True, None, None, {})
        tries = [dataclasses.replace(job, entrypoint=f"a.py:f{i}") for i in range(3)]
        await asyncio.gather(*(publish_session(pub, j, keys) for j in tries))
        info = await js.stream_info(subjects.STREAM_JOURNAL, subjects_filter=">")
        assert (info.state.subjects or {}).get(subjects.journal_subject(job.session_id)) == 1
    finally:
        await nc.close()
