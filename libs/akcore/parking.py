"""A parked session's entry in the ``AK_PARKED`` KV bucket (key: its session id).

The runner that parks a session puts it after the session's ``parked`` journal record and
before it acks the session's job; the dispatchers' wakers watch the bucket and, when the
wait's deadline passes or a message reaches the session's inbox, publish a wake job (the
session's job with ``parked_seq`` set) and delete the entry with compare-and-set on its
revision. docs/reliability.md ("Parking") tells the whole protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import subjects, wire


@dataclass(frozen=True)
class Entry:
    parked_seq: int  # the journal seq of the session's `parked` record
    deadline_us: int  # when to wake it whatever happens (0: only an inbox message does)
    inbox_seq: int  # wake it for an inbox message past this AK_INBOX stream sequence
    job: bytes  # the session's job (wire.Job, encoded), for the wake job
    traceparent: str = ""  # the session's trace, for the wake job's header

    def encode(self) -> bytes:
        return wire.pack(dataclasses.asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        """Raises ValueError when ``data`` is not an entry."""
        raw = wire.unpack(data)
        if not isinstance(raw, dict):
            raise ValueError("a parked entry is not a map")
        try:
            entry = cls(
                parked_seq=int(raw["parked_seq"]),
                deadline_us=int(raw.get("deadline_us") or 0),
                inbox_seq=int(raw.get("inbox_seq") or 0),
                job=bytes(raw["job"]),
                traceparent=str(raw.get("traceparent") or ""),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"a parked entry lacks a field: {e!r}") from None
        return entry

    def wake_job(self) -> wire.Job:
        """The job that resumes the session from its `parked` record."""
        job = wire.decode(wire.Job, self.job)
        return dataclasses.replace(job, parked_seq=self.parked_seq)


def wake_msg_id(session_id: str, parked_seq: int) -> str:
    """The wake job's ``Nats-Msg-Id``: every waker that wakes the same parking publishes the
    same id, so JetStream keeps one."""
    return f"wake-{session_id}-{parked_seq}"


def wake_headers(entry: Entry, session_id: str) -> dict[str, str]:
    headers = {subjects.HDR_MSG_ID: wake_msg_id(session_id, entry.parked_seq)}
    if entry.traceparent:
        headers[subjects.HDR_TRACEPARENT] = entry.traceparent
    return headers
