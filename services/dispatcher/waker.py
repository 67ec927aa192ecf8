"""The waker: resumes parked sessions (the ``AK_PARKED`` KV bucket, see akcore.parking).

Every dispatcher runs one. It watches the bucket and keeps each parked session's entry and
a heap of deadlines; it reads every inbox message (an ordered consumer on ``ak.inbox.>``,
new messages only, started with the first parked session it learns of). A session wakes
when its deadline passes, when a message reaches its inbox past the sequence its entry
read, or, as its entry is learned, when its inbox already holds such a message (one that
came while it was parking). Waking publishes the wake job (``Nats-Msg-Id`` from the session
and its `parked` record: wakers that wake the same parking publish one job), then deletes
the entry with compare-and-set on its revision. Publishing first means that a waker that
dies in between leaves the entry for another waker to wake again (its second wake job is
a duplicate, or stale and dropped by the runner), never a session nobody wakes.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Any

from akcore import bus, subjects, timefmt, wire
from akcore.parking import Entry, wake_headers
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError, NotFoundError

log = logging.getLogger(__name__)

ERR_WRONG_LAST_SEQUENCE = 10071
KV_GONE = ("DEL", "PURGE")


class Parked:
    """What the waker knows of parked sessions: pure bookkeeping (no I/O)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, Entry]] = {}  # session -> (revision, entry)
        self._heap: list[tuple[int, str, int]] = []  # (deadline_us, session, revision)

    def learn(self, session_id: str, revision: int, entry: Entry) -> None:
        self.entries[session_id] = (revision, entry)
        if entry.deadline_us:
            heapq.heappush(self._heap, (entry.deadline_us, session_id, revision))

    def forget(self, session_id: str, revision: int | None = None) -> None:
        """Drops the session's entry (only revision ``revision`` of it, when given)."""
        known = self.entries.get(session_id)
        if known is not None and (revision is None or known[0] == revision):
            del self.entries[session_id]

    def later(self, session_id: str, at_us: int) -> None:
        """Looks at the session again at ``at_us`` (its wake job could not be published)."""
        known = self.entries.get(session_id)
        if known is not None:
            heapq.heappush(self._heap, (at_us, session_id, known[0]))

    def due(self, now_us: int) -> list[str]:
        """The sessions whose deadline has passed (each once; stale heap items skipped)."""
        out = []
        while self._heap and self._heap[0][0] <= now_us:
            _, sid, revision = heapq.heappop(self._heap)
            known = self.entries.get(sid)
            if known is not None and known[0] == revision:
                out.append(sid)
        return out

    def next_deadline(self) -> int | None:
        while self._heap:
            _, sid, revision = self._heap[0]
            known = self.entries.get(sid)
            if known is not None and known[0] == revision:
                return self._heap[0][0]
            heapq.heappop(self._heap)  # forgotten or replaced since
        return None

    def woken_by(self, session_id: str, inbox_seq: int) -> bool:
        """Whether an inbox message at ``inbox_seq`` wakes the session."""
        known = self.entries.get(session_id)
        return known is not None and inbox_seq > known[1].inbox_seq


class Waker:
    IDLE = 5.0  # seconds between looks at the heap when nothing changes
    RETRY = 1.0  # seconds before a wake job that could not be published is tried again

    def __init__(self, nc: Client) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.parked = Parked()
        self.changed = asyncio.Event()
        self._waking: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._kv: Any = None
        self._inbox: Any = None
        self._inbox_starting: asyncio.Lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        """Wakes sessions until ``stop``; starts over after a failure (NATS away)."""
        while not stop.is_set():
            try:
                await self._run(stop)
            except Exception as e:
                log.warning("waker: %r; starting over", e)
                self.parked = Parked()
                self._inbox = None
                try:
                    await asyncio.wait_for(stop.wait(), self.RETRY)
                except TimeoutError:
                    pass

    async def _run(self, stop: asyncio.Event) -> None:
        self._kv = await self.js.key_value(subjects.BUCKET_PARKED)
        watcher = await self._kv.watchall()
        watching = asyncio.create_task(self._watch(watcher))
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if watching.done():
                    watching.result()
                    raise RuntimeError("the watch of AK_PARKED ended")
                for sid in self.parked.due(timefmt.now_us()):
                    self.wake(sid, "its deadline passed")
                nxt = self.parked.next_deadline()
                pause = self.IDLE
                if nxt is not None:
                    pause = min(pause, max(0.0, (nxt - timefmt.now_us()) / 1e6))
                self.changed.clear()
                changed = asyncio.create_task(self.changed.wait())
                await asyncio.wait(
                    {changed, stopping, watching},
                    timeout=pause,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                changed.cancel()
        finally:
            stopping.cancel()
            watching.cancel()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(watching, *self._tasks, return_exceptions=True)
            inbox, self._inbox = self._inbox, None
            for close in (watcher.stop, inbox.unsubscribe if inbox is not None else None):
                if close is not None:
                    try:
                        await close()
                    except Exception as e:  # closing anyway
                        log.debug("waker: %r", e)

    async def _watch(self, watcher: Any) -> None:
        async for e in watcher:
            if e is None:  # every entry there was as the watch began has come
                continue
            if e.operation in KV_GONE:
                self.parked.forget(e.key)
                continue
            try:
                entry = Entry.decode(e.value or b"")
            except ValueError as err:
                log.error("parked session %s: its entry is malformed (%s); skipped", e.key, err)
                continue
            self.parked.learn(e.key, e.revision, entry)
            self.changed.set()
            self._spawn(self._look_at_inbox(e.key, e.revision, entry))

    async def _look_at_inbox(self, session_id: str, revision: int, entry: Entry) -> None:
        """Wakes a session just learned of whose inbox got a message while it parked."""
        await self._read_inboxes()  # from now on, a new message is seen as it comes
        try:
            last = await self.js.get_last_msg(
                subjects.STREAM_INBOX, subjects.inbox_subject(session_id)
            )
        except NotFoundError:
            return
        known = self.parked.entries.get(session_id)
        if (last.seq or 0) > entry.inbox_seq and known is not None and known[0] == revision:
            self.wake(session_id, "its inbox got a message while it parked")

    async def _read_inboxes(self) -> None:
        async with self._inbox_starting:
            if self._inbox is not None:
                return
            self._inbox = await self.js.subscribe(
                subjects.INBOX_ALL,
                stream=subjects.STREAM_INBOX,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                headers_only=True,
                cb=self._on_inbox,
            )

    async def _on_inbox(self, msg: Msg) -> None:
        sid = msg.subject[len(subjects.inbox_subject("")) :]
        if self.parked.woken_by(sid, msg.metadata.sequence.stream):
            self.wake(sid, "a message reached its inbox")

    def wake(self, session_id: str, why: str) -> None:
        if session_id in self._waking or session_id not in self.parked.entries:
            return
        self._waking.add(session_id)
        self._spawn(self._wake(session_id, why))

    async def _wake(self, session_id: str, why: str) -> None:
        try:
            known = self.parked.entries.get(session_id)
            if known is None:
                return
            revision, entry = known
            try:
                job = entry.wake_job()
                await bus.publisher(self.nc).publish(
                    subjects.job_subject(session_id),
                    wire.encode(job),
                    headers=wake_headers(entry, session_id),
                )
            except Exception as e:  # NATS away: again in a while (the entry stays)
                log.warning("parked session %s: not woken yet: %r", session_id, e)
                self.parked.later(session_id, timefmt.now_us() + int(self.RETRY * 1e6))
                self.changed.set()
                return
            log.info("session %s wakes: %s", session_id, why)
            try:
                await self._kv.delete(session_id, last=revision)
            except APIError as e:
                if e.err_code != ERR_WRONG_LAST_SEQUENCE:
                    raise
                # another waker woke it first (or the session parked again meanwhile)
            self.parked.forget(session_id, revision)
        except Exception:  # a task's one broad catch: the watch tells what happened
            log.exception("parked session %s: waking failed", session_id)
        finally:
            self._waking.discard(session_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
