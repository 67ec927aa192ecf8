"""Runner: a job runs in a worker; prints and the end are journaled and materialized."""

from __future__ import annotations

from ak_runner.service import run as run_runner
from ak_store.service import run as run_store
from akcore import bus, subjects, wire
from akcore.config import Settings
from akcore.errors import NotFound
from akcore.sessions import publish_session

from .conftest import running
from .helpers import deploy, eventually, journal

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
