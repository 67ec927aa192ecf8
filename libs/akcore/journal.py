"""Reading a session's journal back, and what a replay needs from it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from . import subjects, wire

# Journal record kinds of durable steps, replayed by step number (system calls use their name:
# subscribe, next_event, signal, next_signal, start, value, ...).
ACTIVITY, SLEEP = "activity", "sleep"


@dataclass
class ReplayState:
    """What a new attempt needs: recorded steps, recorded workflow prints, where to go on."""

    steps: dict[int, dict[str, Any]] = field(default_factory=dict)
    prints: int = 0
    consumed: set[int] = field(default_factory=set)  # inbox stream sequences already taken
    next_seq: int = 1
    ended: bool = False
    traceparent: str = ""  # of the trace the session started in (its created record)
    read_us: int = 0  # how long reading the journal took (shown in the next started record)
    subscribed: bool = False  # an earlier attempt subscribed to events

    def for_worker(self) -> dict[str, Any]:
        return {"steps": self.steps, "prints": self.prints}


def replay_state(records: list[wire.JournalRecord]) -> ReplayState:
    """Folds journal records (in order) into the state a replay starts from."""
    state = ReplayState()
    for rec in records:
        state.next_seq = max(state.next_seq, rec.seq + 1)
        if rec.data.get("inbox_seq"):
            state.consumed.add(int(rec.data["inbox_seq"]))
        if rec.kind == "subscribe":
            state.subscribed = True
        if "step" in rec.data:  # a durable step: activity, sleep or a system call
            state.steps[int(rec.data["step"])] = {"kind": rec.kind, **rec.data}
        elif rec.kind == wire.PRINT and rec.data.get("n"):
            state.prints = max(state.prints, int(rec.data["n"]))
        elif rec.kind == wire.ENDED:
            state.ended = True
        elif rec.kind == wire.CREATED:
            state.traceparent = str(rec.data.get("traceparent") or "")
    return state


async def last_record(js: JetStreamContext, session_id: str) -> wire.JournalRecord | None:
    try:
        raw = await js.get_last_msg(subjects.STREAM_JOURNAL, subjects.journal_subject(session_id))
    except NotFoundError:
        return None
    return wire.decode(wire.JournalRecord, raw.data or b"")


async def read_journal(
    js: JetStreamContext, session_id: str, timeout: float = 10.0
) -> list[wire.JournalRecord]:
    """Every record of one session, in order (an ordered consumer read to the last record)."""
    last = await last_record(js, session_id)
    if last is None:
        return []
    out: list[wire.JournalRecord] = []
    read_all = asyncio.Event()
    failed: list[Exception] = []

    # A callback, not next_msg: next_msg starts two tasks per message, which was most of
    # the time a replay took to read a long journal.
    async def on_msg(msg: Msg) -> None:
        if read_all.is_set():
            return
        try:
            out.append(wire.decode(wire.JournalRecord, msg.data))
            if msg.metadata.num_pending == 0:
                read_all.set()
        except Exception as e:  # a malformed record: the caller hears of it
            failed.append(e)
            read_all.set()

    sub = await js.subscribe(
        subjects.journal_subject(session_id),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=on_msg,
    )
    try:
        async with asyncio.timeout(timeout):
            await read_all.wait()
        if failed:
            raise failed[0]
        return out
    finally:
        await sub.unsubscribe()
