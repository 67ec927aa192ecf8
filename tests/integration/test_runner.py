"""Runner: a job runs in a worker; prints and the end are journaled and materialized."""

from __future__ import annotations

from typing import Any

import pytest
from ak_runner.service import run as run_runner
from ak_store.service import run as run_store
from akcore import bus, subjects, wire
from akcore.config import Settings
from akcore.errors import NotFound
from akcore.sessions import publish_session

from .conftest import running
from .helpers import deploy, eventually, journal, short_job_ack_wait

CODE = b"""\
import os
print("loaded")


def greet(event):
    print("user", os.environ["USER"], "internal", "AK_NATS_URL" in os.environ)
    print("body", event.data.body.text)
    return 7
"""


async def test_job_runs_and_is_journaled(settings: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AK_NATS_URL", settings.nats_url)  # must not leak into the worker
    async with running(run_store, settings, "store"), running(run_runner, settings, "runner"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": CODE})
        sid = "ses_01m8cpgk96e6wakscbfn3064cx"
        job = wire.Job(
            sid,
            d["project_id"],
            d["deployment_id"],
            d["build_id"],
            "simple.py:greet",
            True,
            "evt_1",
            "post",
            {"body": {"bytes": b"hi", "text": "hi", "json": None, "form": None}},
        )
        await publish_session(bus.publisher(nc), job)

        async def completed() -> bool:
            try:
                s = await bus.store_call(nc, "session.get", {"session": sid})
            except NotFound:  # not materialized yet
                return False
            return bool(s["state"] == "COMPLETED")

        await eventually(completed, timeout=30)
        page = await bus.store_call(nc, "session.records", {"session": sid})
        recs = page["records"]
        assert [r["kind"] for r in recs] == [
            "created",
            "started",
            "print",
            "print",
            "print",
            "ended",
        ]
        assert [r["seq"] for r in recs] == list(range(6))
        assert [r["data"]["text"] for r in recs if r["kind"] == wire.PRINT] == [
            "loaded",
            "user Garfield internal False",
            "body hi",
        ]
        assert recs[-1]["data"]["state"] == "COMPLETED"
        # The job is acked once the session has ended, and once the store has all of its
        # records its journal is purged.
        await eventually(lambda: _jobs_empty(js))
        await eventually(lambda: _no_journal(nc, sid))
        await nc.close()


async def _no_journal(nc, sid: str) -> bool:  # type: ignore[no-untyped-def]
    return await journal(nc, sid) == []


async def _jobs_empty(js) -> bool:  # type: ignore[no-untyped-def]
    return (await js.stream_info(subjects.STREAM_JOBS)).state.messages == 0


async def test_a_journal_that_cannot_be_read_back_ends_its_session(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something that is not a record lands in a session's journal: its attempt is fenced
    off by it, and the next one, which cannot replay the journal, ends the session in
    ERROR saying so (it is never retried in a loop)."""
    short_job_ack_wait(monkeypatch)
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        d = await deploy(nc, "p", {"simple.py": CODE})
        sid = "ses_01m8cpgk96e6wakscbfn3064cy"
        job = wire.Job(
            sid,
            d["project_id"],
            d["deployment_id"],
            d["build_id"],
            "simple.py:greet",
            True,
            None,
            None,
            {},
        )
        await publish_session(bus.publisher(nc), job)
        await nc.jetstream().publish(subjects.journal_subject(sid), b"\xc1 not a record")
        async with running(run_runner, settings, "runner"):

            async def ended() -> dict[str, Any] | None:
                try:
                    s = await bus.store_call(nc, "session.get", {"session": sid})
                except NotFound:
                    return None
                return s if s["state"] == wire.ERROR else None

            session = await eventually(ended, timeout=30)
        assert session["error"].startswith(
            "error: the session's journal cannot be read back for a replay: MalformedRecord("
        )
        await nc.close()


async def test_a_job_naming_another_projects_build_runs_nothing(settings: Settings) -> None:
    """A job is checked where it is run: a build of one project never runs with another
    project's vars, whoever published the job (a service's NATS user may publish jobs)."""
    async with running(run_store, settings, "store"), running(run_runner, settings, "runner"):
        nc = await bus.connect(settings.nats_url, "t")
        victim = await deploy(nc, "victim", {"simple.py": CODE})
        evil = await deploy(nc, "evil", {"simple.py": CODE})
        for build_id in (evil["build_id"], victim["build_id"]):  # unpacked, then cached
            job = wire.Job(
                f"ses_01m8cpgk96e6wakscbfn30{build_id[-4:]}",
                victim["project_id"],
                victim["deployment_id"],
                build_id,
                "simple.py:greet",
                True,
                f"evt_{build_id[-4:]}",
                "post",
                {"body": {"bytes": b"hi", "text": "hi", "json": None, "form": None}},
            )
            await publish_session(bus.publisher(nc), job)

            async def ended(sid: str = job.session_id) -> bool:
                try:
                    s = await bus.store_call(nc, "session.get", {"session": sid})
                except NotFound:
                    return False
                return s["state"] in wire.FINAL_STATES

            await eventually(ended, timeout=30)
            s = await bus.store_call(nc, "session.get", {"session": job.session_id})
            if build_id == evil["build_id"]:
                assert s["state"] == "ERROR", s
                assert "is not a build of this session's project" in s["error"], s
                page = await bus.store_call(nc, "session.records", {"session": job.session_id})
                assert not [r for r in page["records"] if r["kind"] == wire.PRINT], page
            else:
                assert s["state"] == "COMPLETED", s["error"]
        await nc.close()


STEPS = b"""\
import random
import time
import autokitteh._runtime


def two(event):
    random.random()
    print("go-ahead", autokitteh._runtime._runtime.go_until > 0)
    random.random()


def forges(event):
    print("ran")
    rt = autokitteh._runtime._runtime
    step = {"type": "step", "step": 1, "kind": "activity", "function": "random"}
    rt.channel.send({**step, "where": "simple.py:16", "granted": True})
    time.sleep(60)


def overlaps(event):
    rt = autokitteh._runtime._runtime
    step = {"type": "step", "kind": "activity", "function": "random", "where": "simple.py:24"}
    rt.channel.send({**step, "step": 1})
    rt.channel.send({**step, "step": 2})  # (while step 1 runs)
    time.sleep(60)
"""


async def _session(nc: Any, d: dict[str, Any], sid: str, entrypoint: str) -> dict[str, Any]:
    """Runs ``entrypoint`` of the build ``d`` as session ``sid``; returns it once it ended."""
    job = wire.Job(
        sid, d["project_id"], d["deployment_id"], d["build_id"], entrypoint, True, None, None, {}
    )
    await publish_session(bus.publisher(nc), job)

    async def ended() -> dict[str, Any] | None:
        try:
            s = await bus.store_call(nc, "session.get", {"session": sid})
        except NotFound:
            return None
        return s if s["state"] in wire.FINAL_STATES else None

    return await eventually(ended, timeout=30)


async def test_a_live_activity_gets_its_go_ahead_in_advance(settings: Settings) -> None:
    """The ack of an activity carries a go-ahead for the next step: the worker holds it
    (its clock is the runner's), and the next activity runs on it and is journaled."""
    session, recs = await _steps_session(settings, "ses_01m8cpgk96e6wakscbfn3064cz", "two")
    assert session["state"] == wire.COMPLETED, session
    assert [r["data"]["text"] for r in recs if r["kind"] == wire.PRINT] == ["go-ahead True"]
    assert [r["data"]["step"] for r in recs if r["kind"] == "activity"] == [1, 2]


async def test_a_step_on_a_go_ahead_never_given_ends_its_session(settings: Settings) -> None:
    """A worker that says it started an activity on a go-ahead in advance the runner did not
    give (here forged by the handler) ends its session in ERROR, at once and for good: the
    handler runs once, nothing of the activity is journaled."""
    session, recs = await _steps_session(settings, "ses_01m8cpgk96e6wakscbfn3064d0", "forges")
    assert session["state"] == wire.ERROR, session
    assert session["error"] == (
        "error: the worker process sent a malformed message (step 1 was started on a "
        "go-ahead it was not given); the session was ended so that it does not repeat it"
    )
    kinds = [r["kind"] for r in recs]
    assert kinds == ["created", "started", "print", "ended"], kinds  # one attempt


async def test_a_step_while_an_activity_runs_ends_its_session_saying_so(
    settings: Settings,
) -> None:
    """Steps come one at a time: a second while the first's activity runs (a forged frame)
    ends the session in ERROR with a message that says which (it said "step 2 out of turn
    (expected step 2)")."""
    session, recs = await _steps_session(settings, "ses_01m8cpgk96e6wakscbfn3064d1", "overlaps")
    assert session["state"] == wire.ERROR, session
    assert session["error"] == (
        "error: the worker process sent a malformed message (step 2 came while step 1 was "
        "running); the session was ended so that it does not repeat it"
    )


async def _steps_session(
    settings: Settings, sid: str, handler: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs ``simple.py:<handler>`` of STEPS as session ``sid`` on a store and a runner of
    their own; returns the session, once ended, and its records."""
    async with running(run_store, settings, "store"), running(run_runner, settings, "runner"):
        nc = await bus.connect(settings.nats_url, "t")
        d = await deploy(nc, "p", {"simple.py": STEPS})
        session = await _session(nc, d, sid, f"simple.py:{handler}")
        page = await bus.store_call(nc, "session.records", {"session": sid})
        await nc.close()
    return session, page["records"]
