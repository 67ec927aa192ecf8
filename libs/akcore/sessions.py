"""Creating a session: its ``created`` journal record, then its job on ``AK_JOBS``."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from nats.aio.client import Client
from nats.errors import MaxPayloadError
from nats.js.errors import APIError

from . import bus, eventdata, journal, subjects, timefmt, tracing, wire
from .datakey import Keyring, SealError


def created_record(job: wire.Job, traceparent: str | None = None) -> wire.JournalRecord:
    """The session's first journal record; ``traceparent`` defaults to the current trace."""
    created = journal.Created(
        project_id=job.project_id,
        deployment_id=job.deployment_id,
        build_id=job.build_id,
        trigger_id=job.trigger_id,
        event_id=job.event_id,
        entrypoint=job.entrypoint,
        is_durable=job.is_durable,
        parent_session_id=job.parent_session_id,
        memo=job.memo,
        # inputs of sessions not started by an event, so `ak session restart` can reuse them
        inputs={} if job.event_id else job.data,
        traceparent=tracing.traceparent() if traceparent is None else traceparent,
    )
    return journal.record(job.session_id, 0, created, timefmt.now_us())


def _inputs_aad(session_id: str) -> bytes:
    return f"{session_id}/job/data".encode()


def seal_inputs(job: wire.Job, keys: Keyring) -> wire.Job:
    """The job with the inputs of a session not started by an event sealed."""
    if job.event_id or not job.data:
        return job
    sealed = keys.seal_text(wire.pack(job.data), _inputs_aad(job.session_id))
    return dataclasses.replace(job, data={}, sealed=sealed)


def job_data(job: wire.Job, keys: Keyring) -> dict[str, Any]:
    """The job's data, its sealed inputs or its event's sealed data opened; raises
    SealError."""
    if job.sealed_data:
        return eventdata.open_data(job.sealed_data, job.project_id, job.event_id or "", keys)
    if not job.sealed:
        return job.data
    data = wire.unpack(keys.open_text(job.sealed, _inputs_aad(job.session_id)))
    if not isinstance(data, dict):
        raise SealError("a job's sealed inputs are not a map")
    return data


async def publish_session(
    pub: bus.Publisher, job: wire.Job, keys: Keyring | None = None
) -> wire.Job:
    """Publishes both messages, de-duplicated by session id, so a retry creates nothing new
    (JetStream answers a repeated `created` with the sequence it stored first). Both carry
    the current trace context: the session's span will be a child of it. ``keys`` seal the
    inputs of a session not started by an event (required for those). Returns the job as
    published.

    The two are published at once and this returns when both are stored, so the session
    is created only if both are: a caller that fails tries both again. The job does not say
    where `created` is (``journal_seq`` 0): it may even be delivered before `created` is
    stored, and its runner looks for it (``journalio.created_seq``)."""
    sid = job.session_id
    context = tracing.inject()
    created = created_record(job, context.get(subjects.HDR_TRACEPARENT, ""))
    if keys is not None:
        created, job = journal.seal(created, keys), seal_inputs(job, keys)
    elif created.data.get("inputs") or created.data.get("memo"):
        raise ValueError(
            "a session's inputs and memo are sealed at rest: publish_session needs keys"
        )
    # (the memo is the `created` record's, sealed: the job need not carry it in the clear)
    job = dataclasses.replace(job, journal_seq=0, memo={})
    created_data, job_data = wire.encode(created), wire.encode(job)
    created_headers = {subjects.HDR_MSG_ID: f"{sid}:0"}
    job_headers = {**context, subjects.HDR_MSG_ID: f"job:{sid}"}
    limit = getattr(pub, "max_payload", 0)  # (0: not known)
    expected = {subjects.HDR_EXPECTED_LAST_SUBJECT_SEQ: "0"}  # (what ``_first`` adds)
    if limit and any(
        len(data) + bus.header_bytes({**headers, **expected}) > limit
        for data, headers in ((created_data, created_headers), (job_data, job_headers))
    ):
        # Before either goes: a job whose `created` never comes is retried by a runner
        # for minutes (big inputs or a big memo of `ak session start`, or of a child).
        # (NATS counts the headers too: a message they take over it is refused.)
        raise MaxPayloadError
    # `created` goes out first, on the same connection: it reaches the server first. Each
    # is stored only if its subject holds nothing yet: a try past JetStream's duplicate
    # window (which de-duplicates by Nats-Msg-Id only within it) must not add a second job
    # while the first is still there (two jobs of one session run it twice at once: the
    # second's delivery again reads the journal as a resumption, and an activity running
    # in the first runs again in it), nor a second `created` to a journal.
    await asyncio.gather(
        _first(pub, subjects.journal_subject(sid), created_data, created_headers),
        _first(pub, subjects.job_subject(job.project_id, sid), job_data, job_headers),
    )
    return job


async def _first(pub: bus.Publisher, subject: str, data: bytes, headers: dict[str, str]) -> None:
    """Publishes a session's first message on ``subject``, unless the subject already holds
    one (a duplicate within the window is answered as JetStream always does)."""
    headers = {**headers, subjects.HDR_EXPECTED_LAST_SUBJECT_SEQ: "0"}
    for pause in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 0.0):
        try:
            await pub.publish(subject, data, headers=headers)
            return
        except APIError as e:
            if bus.is_wrong_last(e):
                return
            # Another try of the same session's message still on its way in (a clustered
            # stream): asked again, it is answered as a duplicate.
            if e.err_code != bus.ERR_DUPLICATE_IN_PROCESS or not pause:
                raise
        await asyncio.sleep(pause)


async def not_started(nc: Client, jobs: list[wire.Job]) -> list[wire.Job]:
    """Those of ``jobs`` whose sessions the store has not seen start. Creating a session
    again (a redelivered event, a replayed ``start``) is a no-op within JetStream's
    duplicate window; after it, a session that ran, ended and had its journal cleaned up
    would run again: ask the store."""
    if not jobs:
        return jobs
    args = {"session_ids": [j.session_id for j in jobs]}
    states = await bus.store_call(nc, "session.states", args)
    return [j for j in jobs if states.get(j.session_id, "CREATED") == "CREATED"]
