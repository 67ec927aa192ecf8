"""Every stream, subject, consumer and header name on the wire, defined once."""

from __future__ import annotations

import zlib

PREFIX = "ak"

STREAM_EVENTS = "AK_EVENTS"
STREAM_JOBS = "AK_JOBS"
STREAM_JOURNAL = "AK_JOURNAL"
STREAM_INBOX = "AK_INBOX"
# Replay chunks: a copy of each journal, many records to a message (akcore.chunks).
STREAM_REPLAY = "AK_REPLAY"
# Events the dispatcher set aside because their destination had too many waiting for their
# filters (ak_dispatcher.admission): a work queue, read by the dispatchers.
STREAM_DEFERRED = "AK_DEFERRED"

# KV bucket of ingress: the last known lookup of each webhook, for when the store is away.
BUCKET_WEBHOOKS = "AK_WEBHOOKS"
# KV bucket of parked sessions (key: session id): the runner puts, the dispatchers' wakers
# watch and delete (compare-and-set on the revision: one waker wins).
BUCKET_PARKED = "AK_PARKED"

EVENTS_ALL = f"{PREFIX}.events.>"
JOBS_ALL = f"{PREFIX}.jobs.>"
JOURNAL_ALL = f"{PREFIX}.journal.>"
INBOX_ALL = f"{PREFIX}.inbox.>"
REPLAY_ALL = f"{PREFIX}.replay.>"
DEFERRED_ALL = f"{PREFIX}.deferred.>"

# Durable consumer names.
CONSUMER_DISPATCHER = "dispatcher"
# AK_DEFERRED's consumers: one per destination with deferred events, made by the store when
# a dispatcher asks (``deferred_consumer``). The single consumer of all of them that came
# before is deleted by the store as it starts (a work queue refuses consumers whose
# subjects overlap).
CONSUMER_DEFERRED_PREFIX = "deferred-"
CONSUMER_DISPATCHER_DEFERRED_RETIRED = "dispatcher-deferred"
CONSUMER_RUNNER = "runner"
CONSUMER_STORE_JOURNAL = "store-journal"
CONSUMER_STORE_EVENTS = "store-events"

# Core NATS (not stored): finished trace spans, for the store to keep per session.
SPANS = f"{PREFIX}.spans"
# Core NATS: the store names each operation that changed projects, deployments, triggers or
# vars (see akcore.cache).
CHANGED = f"{PREFIX}.changed"

# Headers.
HDR_MSG_ID = "Nats-Msg-Id"
HDR_TRACEPARENT = "traceparent"
# The journal's fence: the stream sequence the writer expects the subject's last message at.
HDR_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
# A journal record's: the bytes of the journal with it (the store's watch over the room
# left in AK_JOURNAL ends the sessions holding the most when it nearly fills).
HDR_JOURNAL_BYTES = "Ak-Journal-Bytes"

SERVICES = ("ingress", "dispatcher", "runner", "store")


def event_subject(project_id: str, event_id: str) -> str:
    return f"{PREFIX}.events.{project_id}.{event_id}"


# AK_JOBS is split into lanes by project (``job_lane``): each lane has its own durable
# consumer, and runners split their free places among the lanes with jobs, so that a flood of
# one project's sessions holds up only the projects of its lane (``ak_runner.lanes``).
JOB_LANES = 8
# The consumer of jobs published by earlier versions (``ak.jobs.<session>``, no lane).
JOBS_UNLANED = f"{PREFIX}.jobs.*"


def job_lane(project_id: str) -> int:
    """The lane of a project's jobs: the same in every process and version."""
    return zlib.crc32(project_id.encode()) % JOB_LANES


def job_subject(project_id: str, session_id: str) -> str:
    return f"{PREFIX}.jobs.{job_lane(project_id)}.{session_id}"


def lane_jobs(lane: int) -> str:
    """The subjects of one lane's jobs."""
    return f"{PREFIX}.jobs.{lane}.*"


def lane_consumer(lane: int) -> str:
    """The durable consumer of one lane's jobs, shared by all runners."""
    return f"{CONSUMER_RUNNER}-{lane}"


# Every consumer of AK_JOBS: the lanes', then the one of jobs without a lane.
RUNNER_CONSUMERS = (*(lane_consumer(n) for n in range(JOB_LANES)), CONSUMER_RUNNER)


def journal_subject(session_id: str) -> str:
    return f"{PREFIX}.journal.{session_id}"


def attempts_subject(session_id: str) -> str:
    """Core NATS (not stored): an attempt of the session says it is about to write its
    `started` record, so that an attempt still running it stops (akcore.journalio.JournalWatch).
    Not under ``journal_subject``'s prefix: AK_JOURNAL stores all of that."""
    return f"{PREFIX}.attempts.{session_id}"


def inbox_subject(session_id: str) -> str:
    return f"{PREFIX}.inbox.{session_id}"


def replay_subject(session_id: str) -> str:
    return f"{PREFIX}.replay.{session_id}"


def deferred_subject(destination_id: str) -> str:
    """An event deferred by the dispatcher, by its destination (trigger or connection)."""
    return f"{PREFIX}.deferred.{destination_id}"


def deferred_destination(subject: str) -> str:
    """The destination of a subject ``deferred_subject`` made."""
    return subject.removeprefix(f"{PREFIX}.deferred.")


def deferred_consumer(destination_id: str) -> str:
    """The durable consumer of ``AK_DEFERRED`` that takes one destination's events back."""
    return f"{CONSUMER_DEFERRED_PREFIX}{destination_id}"


def outcome_subject(event_id: str) -> str:
    """Core NATS (not stored): outcomes of the sessions of one event, for sync webhooks."""
    return f"{PREFIX}.outcomes.{event_id}"


def ended_subject(event_id: str) -> str:
    """Core NATS: a sync webhook's session has ended (a runner says so after its `ended`
    record). Under ``outcome_subject`` so that one subscription to ``OUTCOMES_ALL`` hears
    an outcome and its session's end in the order they were published (nats-py runs each
    subscription's callbacks in a task of its own); an earlier ingress's ``ak.outcomes.*``
    does not hear it."""
    return f"{outcome_subject(event_id)}.ended"


OUTCOMES_ALL = f"{PREFIX}.outcomes.>"


def dispatched_subject(event_id: str) -> str:
    """Core NATS: how many sessions and subscriptions one event reached."""
    return f"{PREFIX}.dispatched.{event_id}"


def store_subject(op: str) -> str:
    """Request/reply subject of one store operation, e.g. ``ak.store.session.list``."""
    return f"{PREFIX}.store.{op}"


STORE_ALL = f"{PREFIX}.store.>"


def runner_subject(op: str) -> str:
    """Request/reply subject of a runner operation, e.g. ``ak.runner.pyenv.prepare``."""
    return f"{PREFIX}.runner.{op}"


RUNNER_ALL = f"{PREFIX}.runner.>"


def health_subject(service: str) -> str:
    return f"{PREFIX}.health.{service}"
