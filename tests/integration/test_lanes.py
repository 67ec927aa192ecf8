"""AK_JOBS in lanes: a project flooding the runners holds up only its own lane, and jobs
queued by an earlier version (one consumer of all of AK_JOBS) still run."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
from ak_runner.service import run as run_runner
from ak_store.service import run as run_store
from akcore import bus, ids, sessions, subjects, wire
from akcore.config import Settings
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from .conftest import running
from .helpers import deploy, eventually, session_state

CODE = b"""\
import os


def hog(event):
    os.getpid()  # step 1: the fault hook holds the session here, live, until told
    return "hog"


def quick(event):
    return "quick"
"""


def _job(d: dict[str, Any], entry: str) -> wire.Job:
    return wire.Job(
        ids.new_id("ses"),
        d["project_id"],
        d["deployment_id"],
        d["build_id"],
        f"h.py:{entry}",
        True,
        None,
        None,
        {},
    )


async def _two_lanes(nc: Client) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two projects whose jobs go to different lanes (project ids are random)."""
    first = await deploy(nc, "flood", {"h.py": CODE})
    for n in range(50):
        other = await deploy(nc, f"other{n}", {"h.py": CODE})
        if subjects.job_lane(other["project_id"]) != subjects.job_lane(first["project_id"]):
            return first, other
    raise AssertionError("every project fell into one lane")


async def test_a_flood_of_one_project_does_not_hold_up_another(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A runner with two places; one project's 12 sessions queued, each held live by the fault
    hook once it starts: its two places are taken and ten sessions wait. Another project's
    session starts and completes meanwhile (on a single queue it waited behind all ten, here
    for ever), and so do its next ones, sent at once; the flood's sessions wait in JetStream,
    two running at a time, and all complete once let go."""
    caplog.set_level(logging.WARNING, "ak_runner.faults")
    go = tmp_path / "go"
    monkeypatch.setenv("AK_TEST__FAULTS", f"hold step step=1 entry=h.py:hog file={go}")
    settings = dataclasses.replace(settings, runner_concurrency=2)
    held = "fault injected: hold at step of step 1"
    async with running(run_store, settings, "store"), running(run_runner, settings, "runner"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        try:
            flood, other = await _two_lanes(nc)
            pub = bus.publisher(nc)
            hogs = [_job(flood, "hog") for _ in range(12)]
            for job in hogs:
                await sessions.publish_session(pub, job)

            async def two_held() -> bool:
                return caplog.text.count(held) >= 2

            await eventually(two_held, timeout=60)
            quick = [_job(other, "quick")]
            await sessions.publish_session(pub, quick[0])

            async def quick_completed() -> bool:
                states = {await session_state(nc, job.session_id) for job in quick}
                return states == {wire.COMPLETED}

            await eventually(quick_completed, timeout=30)
            # The next ones too, a burst of them this time (one at a time beyond the places).
            quick = [_job(other, "quick") for _ in range(3)]
            for job in quick:
                await sessions.publish_session(pub, job)
            await eventually(quick_completed, timeout=30)
            assert caplog.text.count(held) == 2  # the flood still has its two places
            info = await js.stream_info(subjects.STREAM_JOBS)
            assert info.state.messages == 12  # ten queued, two held by their sessions
            go.touch()

            async def all_completed() -> bool:
                states = [await session_state(nc, job.session_id) for job in hogs]
                return all(s == wire.COMPLETED for s in states)

            await eventually(all_completed, timeout=90)
        finally:
            go.touch()  # a failed test's held sessions let go: the runner can stop
            await nc.close()


async def test_jobs_queued_by_an_earlier_version_still_run(settings: Settings) -> None:
    """An earlier version read all of AK_JOBS through one consumer, `runner`, and published
    jobs without a lane (``ak.jobs.<session>``). The store narrows that consumer to them as it
    starts (a work queue makes no consumer whose subjects overlap another's, so the lanes'
    could not be made beside it), and a runner takes a job queued then."""
    nc = await bus.connect(settings.nats_url, "t")
    js = nc.jetstream()
    old = ConsumerConfig(
        durable_name=subjects.CONSUMER_RUNNER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=15.0,
        max_ack_pending=4096,
        filter_subject=subjects.JOBS_ALL,
    )
    jobs = StreamConfig(
        name=subjects.STREAM_JOBS,
        subjects=[subjects.JOBS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
    )
    await js.add_stream(jobs)
    await js.add_consumer(subjects.STREAM_JOBS, old)
    try:
        async with running(run_store, settings, "store"):
            info = await js.consumer_info(subjects.STREAM_JOBS, subjects.CONSUMER_RUNNER)
            assert info.config.filter_subject == subjects.JOBS_UNLANED
            d = await deploy(nc, "p", {"h.py": CODE})
            job = _job(d, "quick")
            sid = job.session_id
            created = sessions.created_record(job, "")
            await js.publish(subjects.journal_subject(sid), wire.encode(created))
            await js.publish(f"{subjects.PREFIX}.jobs.{sid}", wire.encode(job))  # no lane
            new = _job(d, "quick")  # and one of this version's, beside it
            await sessions.publish_session(bus.publisher(nc), new)
            async with running(run_runner, settings, "runner"):

                async def both_completed() -> bool:
                    states = {await session_state(nc, s) for s in (sid, new.session_id)}
                    return states == {wire.COMPLETED}

                await eventually(both_completed, timeout=30)
            assert (await js.stream_info(subjects.STREAM_JOBS)).state.messages == 0
    finally:
        await nc.close()
