"""A parked session's entry in the ``AK_PARKED`` KV bucket (key: its session id).

The runner that parks a session puts it after the session's ``parked`` journal record and
before it acks the session's job; the dispatchers' wakers watch the bucket and, when the
wait's deadline passes or a message reaches the session's inbox, publish a wake job (the
session's job with ``parked_seq`` set) and delete the entry with compare-and-set on its
revision. docs/reliability.md ("Parking") tells the whole protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from . import subjects, wire

# What an inbox message is, in its headers (put there by whoever publishes it; see
# ``inbox_headers``): a waker tells from them, reading headers only, whether the message is
# one a parked session's wait takes.
HDR_INBOX_KIND = "Ak-Inbox-Kind"
HDR_INBOX_KEY = "Ak-Inbox-Key"  # the event's subscription, the signal's name, the child's id
MAX_KEY = 200  # longer keys are not ours: such a message wakes the session (the safe side)


@dataclass(frozen=True)
class Entry:
    parked_seq: int  # the journal seq of the session's `parked` record
    deadline_us: int  # when to wake it whatever happens (0: only an inbox message does)
    inbox_seq: int  # wake it for an inbox message past this AK_INBOX stream sequence
    job: bytes  # the session's job (wire.Job, encoded), for the wake job
    traceparent: str = ""  # the session's trace, for the wake job's header
    # The messages its wait takes (``want``); None (an entry of before): any message wakes it.
    wants: tuple[str, ...] | None = None

    def encode(self) -> bytes:
        data = dataclasses.asdict(self)
        if self.wants is None:  # as entries of before were (a waker of before reads it)
            del data["wants"]
        else:
            data["wants"] = list(self.wants)
        return wire.pack(data)

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
                wants=_wants(raw.get("wants")),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"a parked entry lacks a field: {e!r}") from None
        return entry

    def woken_by(self, headers: Mapping[str, str] | None) -> bool:
        """Whether an inbox message with these headers (one past ``inbox_seq``) wakes the
        session: a stop request, a message its wait takes, or one that does not say clearly
        what it is (the safe side: the woken attempt reads it and sees)."""
        if self.wants is None:
            return True
        wanted = want_of(headers or {})
        return wanted is None or wanted in self.wants

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


def _wants(raw: object) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or not all(isinstance(w, str) for w in raw):
        raise TypeError(f"wants is {type(raw).__name__}, not a list of strings")
    return tuple(raw)


def want(kind: str, key: str) -> str:
    """What a wait takes, as entries and `parked` records list it: ``event:<subscription>``
    (next_event), ``name:<name>`` (next_signal: a signal of that name or the end of the child
    session of that id)."""
    return f"{'event' if kind == wire.INBOX_EVENT else 'name'}:{key}"


def inbox_headers(msg: wire.InboxMessage) -> dict[str, str]:
    """The headers that say what an inbox message is (see ``want_of``)."""
    key = msg.subscription_id if msg.kind == wire.INBOX_EVENT else msg.name
    headers = {HDR_INBOX_KIND: msg.kind}
    # A key NATS would not carry as it is (header values lose their outer whitespace) is
    # left out: such a message then wakes any parked wait (want_of), never none.
    if key and key == key.strip() and key.isprintable() and len(key) <= MAX_KEY:
        headers[HDR_INBOX_KEY] = key
    return headers


KINDS = (wire.INBOX_EVENT, wire.INBOX_SIGNAL, wire.INBOX_CHILD_END)


def want_of(headers: Mapping[str, str]) -> str | None:
    """What a wait must want to take the message with these headers; None when any wait
    must wake for it: a stop request, or headers missing, unknown or malformed (they came
    from a boundary: never trusted to keep a session asleep, never an exception)."""
    kind, key = headers.get(HDR_INBOX_KIND), headers.get(HDR_INBOX_KEY)
    if kind not in KINDS or not isinstance(key, str):
        return None
    if not key or len(key) > MAX_KEY or not key.isprintable():
        return None
    return want(kind, key)
