"""Every message that crosses a process boundary, with its one msgpack codec.

Fields change only by adding with defaults: decoding ignores unknown keys and fills
missing ones, so old and new services can talk during a rolling upgrade.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack

_EXT_BIGINT = 1  # ints outside msgpack's 64-bit range travel as decimal text
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1

T = TypeVar("T")


def _widen(obj: Any) -> Any:
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int) and not _INT_MIN <= obj <= _INT_MAX:
        return msgpack.ExtType(_EXT_BIGINT, str(obj).encode())
    if isinstance(obj, dict):
        return {k: _widen(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_widen(v) for v in obj]
    return obj


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_BIGINT:
        return int(data.decode())
    return msgpack.ExtType(code, data)


def pack(obj: Any) -> bytes:
    """Encodes plain data (dicts, lists, str, bytes, numbers of any size, None)."""
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except OverflowError:
        return msgpack.packb(_widen(obj), use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=False)


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def encode(msg: Any) -> bytes:
    """Encodes one of the dataclasses below (their fields hold plain data only, so no deep
    copy is needed: this runs for every message of every service)."""
    return pack({name: getattr(msg, name) for name in _names(type(msg))})


# What a field's annotation lets through, by its outer type (``dict[str, Any]``: a dict);
# fields annotated otherwise (``Any``) are not checked.
_KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool, int),
    "float": (int, float),
    "bytes": (bytes,),
    "dict": (dict,),
    "list": (list,),
    "None": (type(None),),
}
_CHECKS: dict[type, tuple[tuple[str, tuple[type, ...], str], ...]] = {}


def _checks(cls: type) -> tuple[tuple[str, tuple[type, ...], str], ...]:
    """(field, the types it takes, its annotation) for each field of ``cls`` that is checked."""
    checks = _CHECKS.get(cls)
    if checks is None:
        out = []
        for f in dataclasses.fields(cls):
            text = str(f.type)
            parts = [part.strip().split("[", 1)[0] for part in text.split("|")]
            if all(part in _KINDS for part in parts):
                kinds = tuple(kind for part in parts for kind in _KINDS[part])
                out.append((f.name, kinds, text))
        checks = _CHECKS[cls] = tuple(out)
    return checks


def _all_str(d: dict[Any, Any]) -> bool:
    return all(type(k) is str and type(v) is str for k, v in d.items())


def memo_text(memo: dict[str, Any]) -> dict[str, str]:
    """A session's memo maps text to text: each value that is not text as its JSON text
    (a handler's `start(memo=...)` may hold any JSON value)."""
    return {k: v if type(v) is str else json.dumps(v, default=repr) for k, v in memo.items()}


def _as_text(cls: type, name: str, d: dict[Any, Any]) -> dict[str, str]:
    """A memo whose values are not all text (earlier runners passed a child's JSON memo
    on as it was), as ``memo_text`` makes it. Keys must be text."""
    if not all(type(k) is str for k in d):
        raise ValueError(f"{cls.__name__}.{name}: expected dict[str, str], got other keys")
    return memo_text(d)


def decode(cls: type[T], data: bytes) -> T:
    """The message as ``cls``, each field of the type its annotation says (its outer type;
    a ``dict[str, str]``'s keys too, its other values made their JSON text; other dicts'
    and lists' items are not looked into); raises ValueError. Unknown keys are ignored,
    missing ones get their defaults."""
    raw = unpack(data)
    if not isinstance(raw, dict):
        raise ValueError(f"{cls.__name__}: expected a map, got {type(raw).__name__}")
    for name, kinds, text in _checks(cls):
        if name in raw and not isinstance(raw[name], kinds):
            got = type(raw[name]).__name__
            raise ValueError(f"{cls.__name__}.{name}: expected {text}, got {got}")
        if text == "dict[str, str]" and name in raw and not _all_str(raw[name]):
            raw[name] = _as_text(cls, name, raw[name])
    names = _names(cls)
    return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass
class Event:
    """A normalized event on ``AK_EVENTS``."""

    event_id: str
    project_id: str
    destination_id: str  # the trigger the event arrived on
    event_type: str
    data: dict[str, Any]
    memo: dict[str, str] = field(default_factory=dict)
    created_at_us: int = 0
    # ``data`` sealed with the data key (akcore.eventdata), ``data`` then empty; empty in
    # events published by earlier versions.
    sealed_data: bytes = b""
    # ``memo`` sealed likewise (akcore.eventdata), ``memo`` then empty.
    sealed_memo: bytes = b""


@dataclass
class Job:
    """One session to run, on ``AK_JOBS``: everything a runner needs for a fresh start."""

    session_id: str
    project_id: str
    deployment_id: str
    build_id: str
    entrypoint: str
    is_durable: bool
    event_id: str | None
    event_type: str | None
    data: dict[str, Any]
    trigger_id: str = ""
    parent_session_id: str = ""
    memo: dict[str, str] = field(default_factory=dict)
    # The stream sequence of the session's `created` record: a first attempt's first write
    # expects it to be the journal's last (akcore.journalio); 0 when unknown.
    journal_seq: int = 0
    # ``data`` sealed with the data key (akcore.sessions), ``data`` then empty: the inputs
    # of a session not started by an event (a child's come from its parent's handler).
    sealed: str = ""
    # A wake job (the dispatcher's waker): the seq of the `parked` record it resumes from;
    # 0 for the session's first job.
    parked_seq: int = 0
    # The event's data as it rests, sealed (akcore.eventdata: bound to the event), ``data``
    # then empty: the job of a session started by an event.
    sealed_data: bytes = b""
    # Started by a sync webhook's event: the runner says when the session has ended
    # (``subjects.ended_subject``), so a request no outcome will answer is answered then.
    is_sync: bool = False


# Inbox message kinds.
INBOX_EVENT, INBOX_SIGNAL, INBOX_CHILD_END, INBOX_STOP = "event", "signal", "child_end", "stop"


@dataclass
class InboxMessage:
    """Something delivered to one session on ``ak.inbox.<session_id>``.

    event: ``subscription_id`` and ``event`` ({data, event_type, event_id}; ``sealed_data``
           instead of ``data`` when the event's data is sealed, akcore.eventdata)
    signal: ``name`` and ``payload`` (a value encoded by ``autokitteh._values``; never a pickle)
    child_end: ``name`` = the child's session id, ``completed``, ``payload`` = its return value
    stop: ``reason``; ``failed``: the session ends in ERROR with it (the store could not
          keep one of its records), else STOPPED
    """

    kind: str
    subscription_id: str = ""
    event: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    payload: bytes | None = None
    completed: bool = False
    reason: str = ""
    failed: bool = False


# Journal record kinds.
CREATED, STARTED, PRINT, ENDED = "created", "started", "print", "ended"
# Ended states.
COMPLETED, ERROR, STOPPED = "COMPLETED", "ERROR", "STOPPED"
FINAL_STATES = (COMPLETED, ERROR, STOPPED)


@dataclass
class JournalRecord:
    """One entry of a session's append-only history on ``ak.journal.<session_id>``.

    ``data`` by kind:
      created: project_id, deployment_id, build_id, trigger_id, event_id, entrypoint, is_durable
      started: runner, attempt
      print:   text
      ended:   state (COMPLETED/ERROR/STOPPED), error, result (an encoded value or None)
    """

    session_id: str
    seq: int
    kind: str
    t_us: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttemptNotice:
    """On ``ak.attempts.<session_id>`` (core NATS): an attempt of the session is about to
    write its `started` record as record number ``record``, expecting the journal's last
    record at stream sequence ``expected_last`` (JetStream stores it only then).
    ``token``: the attempt's own, to tell its notice from the others'; ``job_seq``: the
    stream sequence of the job message it runs (0: not known)."""

    token: str
    expected_last: int
    record: int
    attempt: int = 0
    runner: str = ""
    job_seq: int = 0


@dataclass
class StoreRequest:
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoreReply:
    ok: bool
    result: Any = None
    error_kind: str = ""
    error: str = ""
