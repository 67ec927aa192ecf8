"""A session whose job is stored twice (its `created` publish failed, tried again past the
duplicate window): its activity runs once."""

from __future__ import annotations

from pathlib import Path

from ak_runner.service import run as run_runner
from ak_store.service import run as run_store
from akcore import bus, subjects, wire
from akcore.config import Settings
from akcore.sessions import publish_session

from .conftest import running
from .helpers import deploy, eventually, journal
from .test_session_start import _deliveries, _eager_runs, _job, _marker, _state, short_ack_wait  # noqa: F401

CODE = b"""\
import time

import autokitteh


@autokitteh.activity
def once(path):
    open(path + "." + str(id(object())) + str(time.time()), "x").close()


def greet(event):
    time.sleep(8)
    once(event.data.body.text)
"""


async def test_a_job_left_without_created_and_a_second_job_run_the_activity_once(
    settings: Settings,
    short_ack_wait: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    """publish_session's `created` failed while its job was stored, and its publisher tried
    again past JetStream's duplicate window (a dispatcher's event redelivered then: the
    store does not know the session, so not_started keeps it): the session now has two
    jobs. The first one, coming back, finds `created` there and resumes the session as
    after a runner crash while the second one runs it. Its activity must run once, and the
    session must end COMPLETED."""
    marker = _marker(tmp_path)
    async with running(run_store, settings, "store"), running(run_runner, settings, "runner"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        d = await deploy(nc, "p", {"simple.py": CODE})
        sid = "ses_01m8cpgk96e6wakscbfn3064r0"
        job = _job(d, sid, marker)
        await bus.publisher(nc).publish(
            subjects.job_subject(sid), wire.encode(job), headers={subjects.HDR_MSG_ID: f"job:{sid}"}
        )

        async def second_delivery() -> bool:
            return await _deliveries(js) >= 2

        await eventually(second_delivery, timeout=30)
        assert await journal(nc, sid) == []
        # The publisher's new try, past the duplicate window: a new job message.
        real = bus.publisher(nc)

        class Late:
            async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> object:
                if subject.startswith(subjects.job_subject("")):
                    headers = {**headers, subjects.HDR_MSG_ID: f"job:{sid}:late"}
                return await real.publish(subject, data, headers=headers)

        await publish_session(Late(), job)  # type: ignore[arg-type]

        async def ended() -> bool:
            return await _state(nc, sid) in wire.FINAL_STATES

        await eventually(ended, timeout=120)
        page = await bus.store_call(nc, "session.records", {"session": sid})
        kinds = [r["kind"] for r in page["records"]]
        state = await _state(nc, sid)
        assert (state, _eager_runs(marker)) == (wire.COMPLETED, 1), (
            state,
            _eager_runs(marker),
            kinds,
        )
        await nc.close()
