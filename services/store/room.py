"""Keeps ``AK_JOURNAL`` and ``AK_INBOX`` from filling up for good.

Both streams are shared by every project and refuse new messages when full (``discard:
new``). A full journal used to be a deadlock: no session could write its `ended` record,
so no journal was purged and room never came back; a full inbox refused every event,
signal and stop request for every session. Here each store looks at both streams every few
seconds; when the room left in one is under ``LEAST_ROOM`` of its limit (or under the
largest message NATS takes), the store ends live sessions until twice that is free: each
time the largest session of the project holding the most of the stream (so one project
flooding it loses its own sessions first, and a project with many small sessions its
largest). Ending is the store's own, since the session may be unable to write anything:
its end goes to SQL (ERROR, saying why), its journal, replay chunks and inbox are purged
(its attempt, if one runs, is fenced at its next write), its parent hears of its end, its
subscriptions go and its runner is asked to stop it.

A journal's size is its last record's ``Ak-Journal-Bytes`` header (the runner's count of
the journal's bytes, its `created` record included); an inbox's is the sum of its messages'
sizes (read as headers only; past ``INBOX_SCAN_MAX`` messages, estimated from the count).
What sessions that ended hold goes first (a child's journal is otherwise kept for minutes,
an ended session's inbox until the next sweep); ends not applied yet count as room.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from akcore import bus, subjects, timefmt, waitfor, wire
from akcore.config import ENV_JOURNAL_MAX_BYTES
from akcore.datakey import Keyring
from akcore.parking import inbox_headers
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from sqlalchemy import Engine, bindparam, update

from .cleanup import SUBJECT_OF, ack_floor, session_subjects, sessions, subject_counts
from .materialize import retire_drained
from .models import Session
from .sealed import seal_column

log = logging.getLogger(__name__)

ENV_STREAM_MAX = "AK_RETENTION__JOURNAL_MAX_BYTES"  # each of AK_JOURNAL and AK_INBOX
# A stream is nearly full when the room left in it is under a tenth of its limit, or under
# the largest message NATS takes (at most a quarter of the limit); sessions are then ended
# until twice that is left (at most half the limit).
LEAST_ROOM = 0.10
EVERY = 5.0  # seconds between two looks (with some jitter: stores look apart)
CONCURRENCY = 32  # journals looked at, at once
INBOX_SCAN_MAX = 100_000  # messages of AK_INBOX read for their sizes (more: estimated)
INBOX_SCAN_SECONDS = 60.0

_SESSIONS = Session.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Held:
    """What a session holds in a stream: bytes; for a journal, whether its last record
    ends the session, and that record's stream sequence."""

    size: int
    ended: bool = False
    last: int = 0


@dataclass(frozen=True)
class Holder:
    """A live session's share of a stream."""

    session_id: str
    project_id: str
    size: int


Ops = Callable[[str, dict[str, Any]], Awaitable[Any]]


class Room:
    """The store's watch over the room left in ``AK_JOURNAL`` and ``AK_INBOX``."""

    def __init__(self, nc: Client, engine: Engine, sql: Any, keys: Keyring, ops: Ops) -> None:
        """``sql(fn, *args)`` runs SQL on the store's threads; ``ops`` is the store's own
        operations (subscriptions are deleted through it, announced as any deletion)."""
        self.nc, self.js = nc, nc.jetstream()
        self.engine, self.sql, self.keys, self.ops = engine, sql, keys, ops

    async def run(self, stop: asyncio.Event) -> None:
        while not await waitfor.pause(stop, EVERY * random.uniform(0.8, 1.2)):
            try:
                await self.look()
            except Exception as e:  # NATS or SQL away: next time
                log.warning("looking at the room left in the session streams: %r", e)

    async def look(self) -> list[str]:
        """Ends sessions where a stream is nearly full; returns those it ended."""
        ended = []
        for stream in (subjects.STREAM_JOURNAL, subjects.STREAM_INBOX):
            info = await self.js.stream_info(stream)
            limit, used = info.config.max_bytes or -1, info.state.bytes
            if limit > 0 and limit - used < self._least_room(limit):
                ended += await self._make_room(stream, used, limit, info.state.messages)
        return ended

    def _least_room(self, limit: int) -> int:
        return int(max(LEAST_ROOM * limit, min(self.nc.max_payload, limit / 4)))

    async def _make_room(self, stream: str, used: int, limit: int, messages: int) -> list[str]:
        sizes = await self._sizes(stream, used, messages)
        found = await self.sql(sessions, self.engine, list(sizes))
        # Sessions that ended first: theirs go now (a child's journal would stay for minutes,
        # and an ended session's inbox until the next sweep: both could be filled again).
        done = {sid for sid in sizes if found.get(sid, ("",))[0] in wire.FINAL_STATES}
        freed = await self._purge_ended(stream, {sid: sizes[sid] for sid in done})
        # Ends written but not applied yet (or records the store has not all applied):
        # their journals go once they are.
        pending = sum(s.size for sid, s in sizes.items() if s.ended and sid not in done)
        pending += sum(sizes[sid].size for sid in done) - freed
        need = used - freed - pending - (limit - min(2 * self._least_room(limit), limit // 2))
        holders = [
            Holder(sid, found[sid][3], s.size)
            for sid, s in sizes.items()
            if sid in found and sid not in done and not s.ended
        ]
        ended = []
        for h in _largest_first(holders):
            if need <= 0:
                break
            why = _reason(stream, used, limit, h)
            if await self._end(h.session_id, found[h.session_id][1], why):
                log.warning(
                    "session %s of project %s ended: %s was %.0f%% full and it held %s of it, "
                    "the most of the project holding the most",
                    h.session_id,
                    h.project_id,
                    stream,
                    100 * used / limit,
                    _size(h.size),
                )
                ended.append(h.session_id)
            need -= h.size
        return ended

    async def _sizes(self, stream: str, used: int, messages: int) -> dict[str, Held]:
        """What each session holds in ``stream``."""
        if stream == subjects.STREAM_INBOX:
            if messages <= INBOX_SCAN_MAX:
                return {sid: Held(n) for sid, n in (await self._inbox_bytes()).items()}
            counts = await subject_counts(self.js, stream)  # (an estimate)
            mean = used // max(1, messages)
            return {sid: Held(n * mean) for sid, n in counts.items()}
        sids = await session_subjects(self.js, stream)
        sizes: dict[str, Held] = {}
        for i in range(0, len(sids), CONCURRENCY):
            chunk = sids[i : i + CONCURRENCY]
            found = await asyncio.gather(*map(self._journal_size, chunk))
            for sid, held in zip(chunk, found, strict=True):
                if held is not None:
                    sizes[sid] = held
        return sizes

    async def _journal_size(self, session_id: str) -> Held | None:
        """The journal's bytes by its last record (which says whether the session ended)."""
        try:
            msg = await self.js.get_last_msg(
                subjects.STREAM_JOURNAL, subjects.journal_subject(session_id)
            )
        except NotFoundError:
            return None
        data = msg.data or b""
        try:
            ended = wire.decode(wire.JournalRecord, data).kind == wire.ENDED
        except Exception:
            ended = False  # not a record of ours: its size counts all the same
        try:
            size = max(int((msg.headers or {}).get(subjects.HDR_JOURNAL_BYTES, "")), len(data))
        except ValueError:  # a `created` record (the dispatcher's), or an older runner's
            size = len(data)
        return Held(size, ended, msg.seq or 0)

    async def _inbox_bytes(self) -> dict[str, int]:
        """Each session's inbox bytes, summed from the stream's messages' sizes (read as
        headers only: an inbox's count of messages says little, one may be 1 MiB)."""
        prefix = len(subjects.inbox_subject(""))
        held: dict[str, int] = defaultdict(int)
        read_all = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            try:
                held[msg.subject[prefix:]] += int((msg.headers or {}).get("Nats-Msg-Size", 0))
            except ValueError:
                pass
            if msg.metadata.num_pending == 0:
                read_all.set()

        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, headers_only=True)
        sub = await self.js.subscribe(
            subjects.INBOX_ALL,
            stream=subjects.STREAM_INBOX,
            ordered_consumer=True,
            cb=on_msg,
            config=config,
        )
        try:
            async with asyncio.timeout(INBOX_SCAN_SECONDS):
                await read_all.wait()
        finally:
            await sub.unsubscribe()
        return dict(held)

    async def _purge_ended(self, stream: str, done: dict[str, Held]) -> int:
        """Purges what sessions that ended hold in ``stream`` (journals once the store has
        applied their records); returns the bytes freed."""
        if stream == subjects.STREAM_JOURNAL:  # (with the journal, all the session held)
            floor = await ack_floor(self.js)
            done = {sid: h for sid, h in done.items() if h.last <= floor}
            streams = tuple(SUBJECT_OF)
        else:
            streams = (stream,)
        for sid in done:
            await self._purge(sid, streams)
        if done:
            log.info("%s nearly full: purged what %d ended sessions held", stream, len(done))
        return sum(h.size for h in done.values())

    async def _purge(self, session_id: str, streams: tuple[str, ...]) -> None:
        for stream in streams:
            await self.js.purge_stream(stream, subject=SUBJECT_OF[stream](session_id))

    async def _end(self, session_id: str, parent: str, why: str) -> bool:
        """Ends a live session by the store (see the module); False if it had ended."""
        if not await self.sql(_end_row, self.engine, self.keys, session_id, why):
            return False
        await self._purge(session_id, tuple(SUBJECT_OF))
        if parent:
            end = wire.InboxMessage(kind=wire.INBOX_CHILD_END, name=session_id, completed=False)
            await tell(self.nc, parent, end, f"end:{session_id}")
        stop = wire.InboxMessage(kind=wire.INBOX_STOP, reason=why, failed=True)
        await tell(self.nc, session_id, stop, f"room:{session_id}")  # (else fenced anyway)
        try:
            await self.ops("subscription.delete", {"session_id": session_id})
        except Exception as e:  # the dispatcher drops an ended session's deliveries anyway
            log.warning("session %s: subscriptions not removed: %r", session_id, e)
        return True


async def tell(nc: Client, session_id: str, msg: wire.InboxMessage, msg_id: str = "") -> None:
    """Puts ``msg`` in a session's inbox (a stop, a child's end); says so when it cannot
    (NATS away, the inbox stream full)."""
    headers = {subjects.HDR_MSG_ID: msg_id, **inbox_headers(msg)} if msg_id else inbox_headers(msg)
    try:
        await bus.publisher(nc).publish(
            subjects.inbox_subject(session_id), wire.encode(msg), headers=headers
        )
    except Exception as e:
        log.warning("session %s: could not be told (%s): %r", session_id, msg.kind, e)


def _largest_first(holders: list[Holder]) -> list[Holder]:
    """Holders in the order they are ended: the largest session of the project holding
    the most (what it holds less those before it in this order), then again."""
    per_project: dict[str, list[Holder]] = defaultdict(list)
    for h in holders:
        per_project[h.project_id].append(h)
    heap = []
    for project, hs in per_project.items():
        hs.sort(key=lambda h: h.size)
        heap.append((-sum(h.size for h in hs), project))
    heapq.heapify(heap)
    order = []
    while heap:
        total, project = heapq.heappop(heap)
        h = per_project[project].pop()
        order.append(h)
        if per_project[project]:
            heapq.heappush(heap, (total + h.size, project))
    return order


def _reason(stream: str, used: int, limit: int, h: Holder) -> str:
    what = "journal" if stream == subjects.STREAM_JOURNAL else "inbox (events not read yet)"
    return (
        f"error: the session streams were nearly full: {stream} held {_size(used)} of its "
        f"{_size(limit)} ({ENV_STREAM_MAX}), and this session's {what} held {_size(h.size)}, "
        "the most of the project holding the most; it was ended to make room for every "
        f"project's sessions. Give {stream} more room ({ENV_STREAM_MAX}), or keep sessions "
        f"shorter ({ENV_JOURNAL_MAX_BYTES}) and read the events they subscribe to"
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


_LIVE_END = (
    update(_SESSIONS)
    .where(
        _SESSIONS.c.session_id == bindparam("sid"),
        _SESSIONS.c.state.not_in(wire.FINAL_STATES),
    )
    .values(
        state=wire.ERROR,
        error=bindparam("error"),
        traceback="",
        updated_us=bindparam("t_us"),
    )
)


def _end_row(engine: Engine, keys: Keyring, session_id: str, why: str) -> bool:
    """The session's end in SQL, unless it had ended; whether it was live."""
    row = {"sid": session_id, "error": seal_column(keys, session_id, "error", why)}
    with engine.begin() as conn:
        done = conn.execute(_LIVE_END, {**row, "t_us": timefmt.now_us()}).rowcount
        if done:
            retire_drained(conn, {session_id})
    return bool(done)
