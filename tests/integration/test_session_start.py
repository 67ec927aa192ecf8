"""A session's `created` record and its job are published at once (``publish_session``):
the job may reach a runner before the record is stored, or without it when its publish
failed (the publisher tries both again). Nothing is journaled before `created`, no step
of the handler's runs until it is there, and a job whose journal was cleaned up after its
session ended runs nothing; a session whose job was stored twice (its `created` publish
failed and was tried again past the duplicate window) runs its activity once."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from ak_runner import session as ak_session
from ak_runner.service import run as run_runner
from ak_store.service import run as run_store
from akcore import bus, subjects, wire
from akcore.config import Settings
from akcore.sessions import publish_session
from nats.aio.client import Client
from nats.js import JetStreamContext

from .conftest import running
from .helpers import (
    deploy,
    eventually,
    jobs_delivered,
    journal,
    session_state,
    short_job_ack_wait,
)

CODE = b"""\
import os


def greet(event):
    os.getpid()  # a step first: what runs before it runs again after a crash, too
    with open(event.data.body.text, "a") as f:
        f.write("ran\\n")
    print("hello")


def eager(event):
    open(event.data.body.text + "." + str(id(object())), "x")  # a file, before any step
    print("hello")
"""


# A session whose job is stored twice: its activity (a file made by each run) must run once.
# Step 1 is the activity: a first attempt is held there by the fault hook (see the test).
ONCE_CODE = b"""\
import time

import autokitteh


@autokitteh.activity
def once(path):
    open(path + "." + str(id(object())) + str(time.time()), "x").close()


def greet(event):
    once(event.data.body.text)
"""


@pytest.fixture
def short_ack_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job left alone by its attempt comes back within seconds."""
    short_job_ack_wait(monkeypatch)


def _job(d: dict[str, str], sid: str, marker: Path, entry: str = "greet") -> wire.Job:
    body = {"bytes": str(marker).encode(), "text": str(marker), "json": None, "form": None}
    return wire.Job(
        sid,
        d["project_id"],
        d["deployment_id"],
        d["build_id"],
        f"simple.py:{entry}",
        True,
        "evt_1",
        "post",
        {"body": body},
    )


def _marker(tmp_path: Path) -> Path:
    where = tmp_path / "runs"
    where.mkdir()
    where.chmod(0o777)  # the handler writes there (as a user of its own in the sandbox)
    return where / "ran"


def _runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def _eager_runs(marker: Path) -> int:
    return len(list(marker.parent.glob(marker.name + ".*")))


@asynccontextmanager
async def _store_and_runner(
    settings: Settings, code: bytes = CODE
) -> AsyncIterator[tuple[Client, dict[str, str]]]:
    """A store and a runner in this process, a client, and project p deployed with
    ``code`` as simple.py."""
    async with running(run_store, settings, "store"), running(run_runner, settings, "runner"):
        nc = await bus.connect(settings.nats_url, "t")
        try:
            yield nc, await deploy(nc, "p", {"simple.py": code})
        finally:
            await nc.close()


async def _job_alone(nc: Client, job: wire.Job, deliveries: int) -> None:
    """The job without its `created` record, as when the publish of `created` failed;
    returns once runners have had jobs ``deliveries`` times."""
    await bus.publisher(nc).publish(
        subjects.job_subject(job.project_id, job.session_id),
        wire.encode(job),
        headers={subjects.HDR_MSG_ID: f"job:{job.session_id}"},
    )
    js = nc.jetstream()

    async def delivered() -> bool:
        return await _deliveries(js) >= deliveries

    await eventually(delivered, timeout=90)  # (~2.5 s each here; a loaded machine is slower)


async def _deliveries(js: JetStreamContext) -> int:
    """Jobs delivered to runners so far, deliveries again included."""
    return await jobs_delivered(js)


async def _no_jobs(js: JetStreamContext) -> bool:
    return (await js.stream_info(subjects.STREAM_JOBS)).state.messages == 0


async def test_a_job_without_its_created_record_waits_for_it(
    settings: Settings, short_ack_wait: None, tmp_path: Path
) -> None:
    marker = _marker(tmp_path)
    async with _store_and_runner(settings) as (nc, d):
        js = nc.jetstream()
        sid = "ses_01m8cpgk96e6wakscbfn3064d0"
        job = _job(d, sid, marker)
        # The job alone, as when the publish of `created` failed: its first delivery finds
        # no `created` (for about 2 s) and leaves the job alone; the second one finds the
        # journal empty and a session the store does not know, and has it back later.
        await _job_alone(nc, job, 3)
        assert await journal(nc, sid) == []
        assert _runs(marker) == 0
        # The publisher tries again: `created` is stored (the job is a duplicate).
        await publish_session(bus.publisher(nc), job)

        async def completed() -> bool:
            return await session_state(nc, sid) == wire.COMPLETED

        await eventually(completed, timeout=60)
        page = await bus.store_call(nc, "session.records", {"session": sid})
        kinds = [r["kind"] for r in page["records"]]
        assert kinds[:2] == ["created", "started"] and kinds[-2:] == ["print", "ended"], kinds
        assert kinds.count("started") == 1, kinds
        assert _runs(marker) == 1
        await eventually(lambda: _no_jobs(js))


async def test_a_job_of_a_session_ended_and_cleaned_up_runs_nothing(
    settings: Settings, short_ack_wait: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job older than JetStream's duplicate window (as this one is made to look) may be
    a stale one: its handler does not start before its `created` record is found."""
    monkeypatch.setattr(ak_session, "FRESH_JOB", 0.0)
    marker = _marker(tmp_path)
    async with _store_and_runner(settings) as (nc, d):
        js = nc.jetstream()
        sid = "ses_01m8cpgk96e6wakscbfn3064d1"
        job = _job(d, sid, marker, "eager")
        await publish_session(bus.publisher(nc), job)

        async def cleaned_up() -> bool:
            return await session_state(nc, sid) == wire.COMPLETED and await journal(nc, sid) == []

        await eventually(cleaned_up, timeout=60)
        assert _eager_runs(marker) == 1
        # The same job again, past JetStream's duplicate window: its journal is empty and
        # the store has the session ended.
        await bus.publisher(nc).publish(
            subjects.job_subject(job.project_id, sid),
            wire.encode(job),
            headers={subjects.HDR_MSG_ID: f"job:{sid}:again"},
        )
        # Its first delivery finds no `created` and leaves it alone; the next one finds the
        # journal empty and the session ended, and acks it.
        await eventually(lambda: _no_jobs(js), timeout=30)
        assert _eager_runs(marker) == 1
        assert await journal(nc, sid) == []
        assert await session_state(nc, sid) == wire.COMPLETED


async def test_a_job_whose_created_record_never_comes_is_dropped_in_the_end(
    settings: Settings, short_ack_wait: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its publisher gave up (a parent's `start` that failed): once the job has used up its
    attempts and is past JetStream's duplicate window (as this one is made to be), it goes,
    with nothing journaled (a new try of its publisher would bring a new job)."""
    monkeypatch.setattr(bus, "DUPLICATE_WINDOW", 0.0)
    settings = dataclasses.replace(settings, max_attempts=2)
    marker = _marker(tmp_path)
    async with _store_and_runner(settings) as (nc, d):
        js = nc.jetstream()
        sid = "ses_01m8cpgk96e6wakscbfn3064d2"
        await _job_alone(nc, _job(d, sid, marker, "eager"), 3)
        await eventually(lambda: _no_jobs(js), timeout=30)
        assert await journal(nc, sid) == []
        assert await session_state(nc, sid) == ""


async def test_a_job_left_without_created_and_a_second_job_run_the_activity_once(
    settings: Settings,
    short_ack_wait: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """publish_session's `created` failed while its job was stored, and its publisher tried
    again past JetStream's duplicate window (a dispatcher's event redelivered then: the
    store does not know the session, so not_started keeps it): the session must still have
    one job. Were the second one stored, the two would run the session at once: the
    fault hook holds the first attempt, live, before its activity (step 1) until every job
    of the session has started an attempt (as many `started` records as jobs), so that a
    second job's attempt, resuming the session as after a runner crash, would run the
    activity too. Its activity must run once, and the session must end COMPLETED."""
    caplog.set_level(logging.WARNING, "ak_runner.faults")
    go = tmp_path / "go"
    monkeypatch.setenv("AK_TEST__FAULTS", f"hold step step=1 entry=simple.py:greet file={go}")
    marker = _marker(tmp_path)
    async with _store_and_runner(settings, ONCE_CODE) as (nc, d):
        js = nc.jetstream()
        sid = "ses_01m8cpgk96e6wakscbfn3064r0"
        job = _job(d, sid, marker)
        await _job_alone(nc, job, 2)
        assert await journal(nc, sid) == []
        # The publisher's new try, past the duplicate window: a new job message.
        real = bus.publisher(nc)

        class Late:
            async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> object:
                if subject == subjects.job_subject(job.project_id, sid):
                    headers = {**headers, subjects.HDR_MSG_ID: f"job:{sid}:late"}
                return await real.publish(subject, data, headers=headers)

        await publish_session(Late(), job)  # type: ignore[arg-type]

        async def held_and_all_jobs_started() -> bool:
            if "fault injected: hold at step of step 1" not in caplog.text:
                return False
            info = await js.stream_info(
                subjects.STREAM_JOBS, subjects_filter=subjects.job_subject(job.project_id, sid)
            )
            jobs = (info.state.subjects or {}).get(subjects.job_subject(job.project_id, sid), 0)
            kinds = [r.kind for r in await journal(nc, sid)]
            return kinds.count("started") >= max(jobs, 1)

        await eventually(held_and_all_jobs_started, timeout=60)
        go.touch()

        async def ended() -> bool:  # and every attempt over: its job settled
            return await session_state(nc, sid) in wire.FINAL_STATES and await _no_jobs(js)

        await eventually(ended, timeout=120)
        page = await bus.store_call(nc, "session.records", {"session": sid})
        kinds = [r["kind"] for r in page["records"]]
        state = await session_state(nc, sid)
        assert (state, _eager_runs(marker)) == (wire.COMPLETED, 1), (
            state,
            _eager_runs(marker),
            kinds,
        )


async def test_deliveries_spent_waiting_for_created_are_not_failed_attempts(
    settings: Settings, short_ack_wait: None, tmp_path: Path
) -> None:
    """A job that found no `created` record for more deliveries than AK_JOBS__MAX_ATTEMPTS
    (its publisher's new try came late) still runs its session when the record comes: no
    attempt of it had started, so none had failed."""
    settings = dataclasses.replace(settings, max_attempts=2)
    marker = _marker(tmp_path)
    async with _store_and_runner(settings) as (nc, d):
        js = nc.jetstream()
        sid = "ses_01m8cpgk96e6wakscbfn3064d3"
        job = _job(d, sid, marker)
        await _job_alone(nc, job, 3)  # past the limit: three deliveries found nothing
        assert await journal(nc, sid) == []
        await publish_session(bus.publisher(nc), job)

        async def ended() -> bool:
            return await session_state(nc, sid) in wire.FINAL_STATES

        await eventually(ended, timeout=60)
        session = await bus.store_call(nc, "session.get", {"session": sid})
        assert (session["state"], _runs(marker)) == (wire.COMPLETED, 1), session
        await eventually(lambda: _no_jobs(js))
