"""The journal's record kinds, their payloads, the fold over a session's records and the
replay rules. Pure: no I/O (reading and writing the stream is ``akcore.journalio``).

Every record of ``ak.journal.<session>`` is a ``wire.JournalRecord`` whose ``kind`` is one
of ``Kind`` and whose ``data`` is the payload of that kind (``payload`` parses it, checked;
``data_of`` makes it). docs/replay.md describes each kind. Replay: step k of a new attempt
looks up the durable step k of the journal (``History.replay``); recorded, it is returned
and not done again; another kind or function means the code changed (non-determinism);
past the end, the step is live.

What a handler produced (prints, outcomes, errors, system-call arguments) is sealed with
the data key wherever a record rests (``seal`` before it is written, ``unseal`` where it is
read back): the fields of ``SEALED_FIELDS`` go, packed, into one sealed text field
``sealed``, and a pickled ``result`` is sealed in place. Both are bound to the session and
record number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from autokitteh._typed import TypeMismatch, typed, untyped

from . import wire
from .datakey import Keyring, SealError


class Kind(StrEnum):
    """Every kind of journal record."""

    CREATED = "created"  # the dispatcher (or whoever starts a session), before its job
    STARTED = "started"  # a runner, as an attempt begins (fenced: the attempt's first write)
    PRINT = "print"  # a print() of the handler or of an activity
    ACTIVITY = "activity"  # a finished activity: its outcome (step)
    SLEEP = "sleep"  # a durable sleep's deadline (step)
    RETRY = "retry"  # an attempt that stopped for a reason that may pass (NATS, the store)
    ENDED = "ended"  # the session's end: COMPLETED, ERROR or STOPPED
    PARKED = "parked"  # a waiting session gave up its worker and its job (docs/reliability.md)
    # System calls made by handler code: each a durable step, named as the SDK names it.
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    NEXT_EVENT = "next_event"
    SIGNAL = "signal"
    NEXT_SIGNAL = "next_signal"
    START = "start"  # a child session
    VALUE = "value"
    VALUE_KEYS = "value_keys"
    VALUE_PUBLISH = "value_publish"
    OUTCOME = "outcome"
    ENCODE_JWT = "encode_jwt"  # a JWT signed with the server's GitHub app key
    REFRESH_OAUTH = "refresh_oauth"


SYSCALLS = frozenset(
    {
        Kind.SUBSCRIBE,
        Kind.UNSUBSCRIBE,
        Kind.NEXT_EVENT,
        Kind.SIGNAL,
        Kind.NEXT_SIGNAL,
        Kind.START,
        Kind.VALUE,
        Kind.VALUE_KEYS,
        Kind.VALUE_PUBLISH,
        Kind.OUTCOME,
        Kind.ENCODE_JWT,
        Kind.REFRESH_OAUTH,
    }
)
STEP_KINDS = frozenset({Kind.ACTIVITY, Kind.SLEEP, *SYSCALLS})


class MalformedRecord(ValueError):
    """A record whose kind is unknown or whose data does not fit its kind."""


# The number of the record that ends a session whose journal cannot be read: after any
# number a record of it may have had.
AFTER_UNREADABLE = (1 << 31) - 1  # (the largest record number SQL keeps)


@dataclass(frozen=True)
class Created:
    project_id: str
    deployment_id: str
    build_id: str
    entrypoint: str
    is_durable: bool = True
    trigger_id: str = ""
    event_id: str | None = None
    parent_session_id: str = ""
    memo: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)  # of sessions not started by an event
    traceparent: str = ""  # the trace the session belongs to: a replay continues it


@dataclass(frozen=True)
class Started:
    runner: str
    attempt: int
    replayed_steps: int = 0
    read_us: int = 0  # how long reading the journal took
    chunked: int = 0  # how many of the records read came from replay chunks (akcore.chunks)
    job_seq: int = 0  # the stream sequence of the job message its attempt ran (0: not known)


@dataclass(frozen=True)
class Print:
    text: str
    n: int = 0  # the number of a handler-level print (1, 2, ...); 0 inside an activity
    activity: bool = False
    cut: int = 0  # the size of the original text, when it was cut to the limit


@dataclass(frozen=True)
class Activity:
    step: int
    function: str
    ok: bool
    result: bytes  # a pickle made by the session's own code: opaque to the services
    digest: str = ""
    error: str = ""
    duration_us: int = 0  # how long it ran, as its worker timed it (shown, never trusted)


@dataclass(frozen=True)
class Sleep:
    step: int
    seconds: float
    deadline_us: int
    function: str = "sleep"


@dataclass(frozen=True)
class Syscall:
    step: int
    function: str  # the kind, again (replay compares it like an activity's function)
    args: dict[str, Any] = field(default_factory=dict)
    result: bytes = b""  # a pickle made by the runner from plain data
    error: str = ""
    inbox_seq: int = 0  # the inbox message it took (next_event, next_signal)


@dataclass(frozen=True)
class Retry:
    attempt: int
    error: str


# Why a session parked: what its step waits for.
PARK_REASONS = ("sleep", "next_event", "next_signal", "child")


@dataclass(frozen=True)
class Parked:
    step: int  # the durable step it waits in (its sleep, or its live next_event/next_signal)
    reason: str  # one of PARK_REASONS
    deadline_us: int = 0  # when the wait ends by itself (0: only an inbox message ends it)
    inbox_seq: int = 0  # the last AK_INBOX stream sequence the attempt had read (0: none)
    # What inbox messages the wait takes (akcore.parking.want): a waker wakes the session
    # for those and for a stop request only. None (records of before): any message wakes it.
    wants: list[str] | None = None
    # When the attempt that parked started counting AK_RUNNER__SESSION_TIMEOUT (µs since the
    # epoch; 0: it had no limit, or a record of before): the attempt it wakes to goes on
    # counting from there.
    clock_us: int = 0


@dataclass(frozen=True)
class Ended:
    state: str  # wire.COMPLETED, wire.ERROR or wire.STOPPED
    error: str = ""
    traceback: str = ""
    result: bytes | None = None  # the handler's return value (autokitteh._values), or None
    inbox: bool = False  # its inbox may hold messages (the store purges it with the journal)


Payload = Created | Started | Print | Activity | Sleep | Syscall | Retry | Ended | Parked
Step = Activity | Sleep | Syscall

_TYPES: dict[Kind, type[Any]] = {
    Kind.CREATED: Created,
    Kind.STARTED: Started,
    Kind.PRINT: Print,
    Kind.ACTIVITY: Activity,
    Kind.SLEEP: Sleep,
    Kind.RETRY: Retry,
    Kind.ENDED: Ended,
    Kind.PARKED: Parked,
    **{k: Syscall for k in SYSCALLS},
}


def kind_of(rec: wire.JournalRecord) -> Kind:
    try:
        return Kind(rec.kind)
    except ValueError:
        raise MalformedRecord(f"unknown journal record kind {rec.kind!r}") from None


def payload(rec: wire.JournalRecord) -> Payload:
    """The record's data as the payload of its kind; raises MalformedRecord."""
    cls = _TYPES[kind_of(rec)]
    try:
        return typed(cls, rec.data, f"{rec.kind} record {rec.seq}")  # type: ignore[no-any-return]
    except TypeMismatch as e:
        raise MalformedRecord(str(e)) from None


def data_of(p: Payload) -> dict[str, Any]:
    """The wire form of a payload: its fields, leaving out those at their defaults."""
    return untyped(p)


class NonDeterminism(Exception):
    """The code asked for a different step than the journal recorded at that place."""


@dataclass
class History:
    """What a session's records add up to: what a new attempt replays and where it goes on."""

    steps: dict[int, Step] = field(default_factory=dict)
    prints: int = 0  # handler-level prints recorded (not printed again on replay)
    consumed: set[int] = field(default_factory=set)  # inbox stream sequences taken
    next_seq: int = 0  # the seq of the next record
    created: Created | None = None
    ended: Ended | None = None
    attempts: int = 0  # `started` records
    last_started: Started | None = None
    last_retry: Retry | None = None
    subscribed: bool = False  # an attempt subscribed to events
    last_kind: str = ""  # the kind of the last record but `retry` records
    last_parked: tuple[int, Parked] | None = None  # the last `parked` record and its seq
    parked: dict[int, Parked] = field(default_factory=dict)  # by step: the last of each
    started_since_park: int = 0  # `started` records after the last `parked` one

    @property
    def traceparent(self) -> str:
        return self.created.traceparent if self.created else ""

    def add(self, seq: int, p: Payload) -> None:
        """Folds one more record (records come in journal order)."""
        self.next_seq = max(self.next_seq, seq + 1)
        if not isinstance(p, Retry):  # (a retry written after a park leaves it parked)
            self.last_kind = p.function if isinstance(p, Syscall) else _KINDS[type(p)]
        if isinstance(p, (Activity, Sleep, Syscall)):
            self.steps[p.step] = p
            if isinstance(p, Syscall):
                if p.inbox_seq:
                    self.consumed.add(p.inbox_seq)
                if p.function == Kind.SUBSCRIBE:
                    self.subscribed = True
        elif isinstance(p, Print):
            self.prints = max(self.prints, p.n)
        elif isinstance(p, Started):
            self.attempts += 1
            self.started_since_park += 1
            self.last_started = p
        elif isinstance(p, Parked):
            self.last_parked = (seq, p)
            self.parked[p.step] = p
            self.started_since_park = 0
        elif isinstance(p, Retry):
            self.last_retry = p
        elif isinstance(p, Ended):
            self.ended = p
        elif isinstance(p, Created):
            self.created = p

    def replay(self, step: int, kind: str, function: str, where: str) -> Step | None:
        """The recorded outcome of durable step ``step``, or None when it is live.

        Raises:
            NonDeterminism: the journal has another kind or function at ``step``.
        """
        rec = self.steps.get(step)
        if rec is None:
            return None
        recorded = _step_kind(rec)
        if recorded != kind or rec.function != function:
            raise NonDeterminism(
                f"non-determinism at {where}: step {step} of the journal is "
                f'{recorded} "{rec.function}", but the code now asks for {kind} "{function}". '
                "A replayed handler must make the same calls in the same order: keep "
                "non-deterministic code (random values, clocks, I/O) inside activities and do "
                "not change the code of running sessions."
            )
        return rec

    @property
    def parked_at(self) -> int:
        """The seq of the `parked` record the journal ends with (0: it ends otherwise)."""
        if self.last_kind == Kind.PARKED and self.last_parked is not None:
            return self.last_parked[0]
        return 0

    def is_replayed_print(self, n: int) -> bool:
        return 0 < n <= self.prints


def _step_kind(rec: Step) -> str:
    if isinstance(rec, Activity):
        return Kind.ACTIVITY
    if isinstance(rec, Sleep):
        return Kind.SLEEP
    return rec.function


def fold(records: list[wire.JournalRecord]) -> History:
    """The history of a session's records, in journal order; raises MalformedRecord."""
    history = History()
    for rec in records:
        history.add(rec.seq, payload(rec))
    return history


def record(session_id: str, seq: int, p: Payload, t_us: int) -> wire.JournalRecord:
    return wire.JournalRecord(
        session_id=session_id, seq=seq, kind=str(kind_for(p)), t_us=t_us, data=data_of(p)
    )


def kind_for(p: Payload) -> Kind:
    """The kind a payload is written as (a system call's is its function)."""
    if isinstance(p, Syscall):
        return Kind(p.function)
    kind = _KINDS.get(type(p))
    if kind is None:
        raise TypeError(f"not a journal payload: {p!r}")
    return kind


_KINDS: dict[type[Any], Kind] = {cls: k for k, cls in _TYPES.items() if cls is not Syscall}


# What a handler produced, by kind: sealed together into the ``sealed`` field (see the module).
SEALED = "sealed"
RESULT = "result"
SEALED_FIELDS: dict[str, tuple[str, ...]] = {
    Kind.CREATED: ("inputs", "memo"),
    Kind.PRINT: ("text",),
    Kind.ACTIVITY: ("error", "digest"),
    Kind.ENDED: ("error", "traceback"),
    **{k: ("args", "error") for k in SYSCALLS},
}
_WITH_RESULT: frozenset[str] = frozenset({Kind.ACTIVITY, Kind.ENDED, *SYSCALLS})
# Sealed since a later version: read as written by earlier ones (in plaintext) too.
_ONCE_PLAIN = frozenset({"digest", "memo"})


def aad(session_id: str, seq: int, name: str) -> bytes:
    """What binds a sealed field to its place: a session, a record number, a field."""
    return f"{session_id}/{seq}/{name}".encode()


def seal(rec: wire.JournalRecord, keys: Keyring) -> wire.JournalRecord:
    """The record as it rests: what the handler produced sealed (see the module). Runs for
    every record written: kinds are looked up by their text (a Kind is a str)."""
    data = dict(rec.data)
    hidden = {f: data.pop(f) for f in SEALED_FIELDS.get(rec.kind, ()) if f in data}
    if hidden:
        data[SEALED] = keys.seal_text(wire.pack(hidden), aad(rec.session_id, rec.seq, SEALED))
    result = data.get(RESULT)
    if rec.kind in _WITH_RESULT and isinstance(result, bytes) and result:
        data[RESULT] = keys.seal(result, aad(rec.session_id, rec.seq, RESULT))
    return wire.JournalRecord(rec.session_id, rec.seq, rec.kind, rec.t_us, data)


def unseal(rec: wire.JournalRecord, keys: Keyring) -> wire.JournalRecord:
    """The record as written, from the record as it rests; raises MalformedRecord when
    what should be sealed is not, or does not open."""
    kind_of(rec)  # a known kind (a Kind is a str: the lookups below use the text)
    if any(f in rec.data and f not in _ONCE_PLAIN for f in SEALED_FIELDS.get(rec.kind, ())):
        raise MalformedRecord(f"{rec.kind} record {rec.seq} of {rec.session_id} is not sealed")
    data = dict(rec.data)
    try:
        sealed = data.pop(SEALED, None)
        if sealed is not None:
            data.update(unseal_fields(rec.session_id, rec.seq, sealed, keys))
        result = data.get(RESULT)
        if rec.kind in _WITH_RESULT and result:
            if not isinstance(result, bytes):
                raise SealError("its result is not bytes")
            data[RESULT] = keys.open(result, aad(rec.session_id, rec.seq, RESULT))
    except SealError as e:
        raise MalformedRecord(f"{rec.kind} record {rec.seq} of {rec.session_id}: {e}") from None
    return wire.JournalRecord(rec.session_id, rec.seq, rec.kind, rec.t_us, data)


def unseal_fields(session_id: str, seq: int, sealed: Any, keys: Keyring) -> dict[str, Any]:
    """The fields a record's ``sealed`` field holds (none when it is None); raises SealError."""
    if sealed is None:
        return {}
    if not isinstance(sealed, str):
        raise SealError("its sealed field is not text")
    fields = wire.unpack(keys.open_text(sealed, aad(session_id, seq, SEALED)))
    if not isinstance(fields, dict):
        raise SealError("its sealed field does not hold a map")
    return fields
