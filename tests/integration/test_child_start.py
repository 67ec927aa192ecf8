"""A child session started again by a replayed step: a no-op, also once JetStream's
duplicate window has passed and the child has ended and had its journal cleaned up."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from ak_runner.inbox import Inbox
from ak_runner.syscalls import SyscallError, Syscalls
from ak_store.service import run as run_store
from akcore import bus, ids, subjects, timefmt, wire
from akcore.config import Settings
from akcore.errors import NotFound
from akcore.journal import unseal
from akcore.secrets import load_keyring

from .conftest import running
from .helpers import deploy, eventually, journal


async def test_a_replayed_start_does_not_run_an_ended_child_again(settings: Settings) -> None:
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        d = await deploy(nc, "p", {"h.py": b"def child(event): pass\n"})
        parent = _parent(d)
        calls = Syscalls(nc, parent, Inbox(js, parent.session_id, set(), lambda r, f: None))
        for name in (subjects.STREAM_JOURNAL, subjects.STREAM_JOBS):  # a short memory of ids
            info = await js.stream_info(name)
            await js.update_stream(dataclasses.replace(info.config, duplicate_window=1.0))
        args = {"loc": "h.py:child", "data": {}, "memo": {}, "project": ""}
        child, _ = await calls.call("start", args, b"", 1)
        # The child ran and ended; the store has it and purged its journal; its job is done.
        pub = bus.publisher(nc)
        ended = wire.JournalRecord(child, 1, wire.ENDED, timefmt.now_us(), {"state": "COMPLETED"})
        await pub.publish(subjects.journal_subject(child), wire.encode(ended))
        await js.purge_stream(subjects.STREAM_JOBS)

        async def ended_in_store() -> bool:
            states = await bus.store_call(nc, "session.states", {"session_ids": [child]})
            return bool(states.get(child) == "COMPLETED")

        await eventually(ended_in_store, timeout=20)
        # (the store's sweep purges a child's journal some minutes after its end)
        await js.purge_stream(subjects.STREAM_JOURNAL, subject=subjects.journal_subject(child))
        probe = {subjects.HDR_MSG_ID: "probe"}
        await pub.publish(subjects.job_subject("prj", "probe"), b"", headers=probe)

        async def forgotten() -> bool:  # JetStream no longer drops a repeat of the ids
            ack = await pub.publish(subjects.job_subject("prj", "probe"), b"", headers=probe)
            return not ack.get("duplicate")

        await eventually(forgotten, timeout=20)
        await js.purge_stream(subjects.STREAM_JOBS)
        # The parent's attempt died before its `start` step was journaled: the replay runs
        # the step again and names the same child.
        again, _ = await calls.call("start", args, b"", 1)
        assert again == child
        assert await journal(nc, child) == []  # no second `created`
        assert (await js.stream_info(subjects.STREAM_JOBS)).state.messages == 0  # no job
        await nc.close()


async def test_a_childs_memo_of_other_json_values_is_kept_as_their_text(
    settings: Settings,
) -> None:
    """A session's memo maps strings to strings: `start(..., memo={"n": 1})` gives the
    child `{"n": "1"}`, kept sealed in its `created` record (a handler may put anything in
    it) and not in its job; a memo that is not a map is the handler's error."""
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "t")
        js = nc.jetstream()
        d = await deploy(nc, "p", {"h.py": b"def child(event): pass\n"})
        parent = _parent(d)
        inbox = Inbox(js, parent.session_id, set(), lambda r, f: None)
        calls = Syscalls(nc, parent, inbox, keys=load_keyring())
        memo = {"n": 1, "s": "memo-secret-7Q", "l": [1, {"a": None}], "b": True}
        args = {"loc": "h.py:child", "data": {}, "memo": memo, "project": ""}
        child, _ = await calls.call("start", args, b"", 1)
        info = await js.stream_info(subjects.STREAM_JOBS, subjects_filter=subjects.JOBS_ALL)
        (subject,) = info.state.subjects or {}
        msg = await js.get_last_msg(subjects.STREAM_JOBS, subject)
        job = wire.decode(wire.Job, msg.data)
        assert job.session_id == child and job.memo == {}
        assert b"memo-secret-7Q" not in msg.data
        (created,) = await journal(nc, child)
        assert "memo" not in created.data and b"memo-secret-7Q" not in wire.encode(created)
        opened = unseal(created, load_keyring())
        want = {"n": "1", "s": "memo-secret-7Q", "l": '[1, {"a": null}]', "b": "true"}
        assert opened.data["memo"] == want

        async def kept() -> dict[str, Any] | None:  # and `ak session get|records` show it
            try:
                return await bus.store_call(nc, "session.get", {"session": child})  # type: ignore[no-any-return]
            except NotFound:
                return None

        assert (await eventually(kept, timeout=20))["memo"] == want
        records = await bus.store_call(nc, "session.records", {"session": child})
        assert records["records"][0]["data"]["memo"] == want
        with pytest.raises(SyscallError, match="start memo must be a dict, not list"):
            await calls.call("start", {**args, "memo": ["a"]}, b"", 2)
        await nc.close()


def _parent(d: dict[str, Any]) -> wire.Job:
    """The job of a parent session in the deployment ``d``."""
    return wire.Job(
        ids.new_id("ses"),
        d["project_id"],
        d["deployment_id"],
        d["build_id"],
        "h.py:parent",
        True,
        None,
        None,
        {},
    )
