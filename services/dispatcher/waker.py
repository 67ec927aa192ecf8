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
import random
from collections.abc import Mapping
from typing import Any

from akcore import bus, subjects, timefmt, waitfor, wire
from akcore.parking import Entry, wake_headers
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError, NotFoundError

log = logging.getLogger(__name__)

KV_GONE = ("DEL", "PURGE")


class Parked:
    """What the waker knows of parked sessions: pure bookkeeping (no I/O)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, Entry]] = {}  # session -> (revision, entry)
        self._heap: list[tuple[int, str, int]] = []  # (deadline_us, session, revision)
        # Deadlines that came due while a wake of the same session was in flight: looked at
        # again once it is over (``release``), since its entry may have been replaced.
        self._held: dict[str, list[tuple[int, str, int]]] = {}
        # Delete markers of woken entries (session -> the marker's revision), to purge.
        self.markers: dict[str, int] = {}

    def learn(self, session_id: str, revision: int, entry: Entry) -> None:
        self.entries[session_id] = (revision, entry)
        if entry.deadline_us:
            heapq.heappush(self._heap, (entry.deadline_us, session_id, revision))

    def forget(self, session_id: str, revision: int | None = None) -> None:
        """Drops the session's entry (only revision ``revision`` of it, when given)."""
        known = self.entries.get(session_id)
        if known is not None and (revision is None or known[0] == revision):
            del self.entries[session_id]

    def deleted(self, session_id: str, revision: int) -> None:
        """The session's entry was deleted (or purged) by the marker at ``revision``."""
        self.forget(session_id)
        self.markers[session_id] = revision

    def take_markers(self) -> dict[str, int]:
        """The delete markers seen since the last call (to purge)."""
        out, self.markers = self.markers, {}
        return out

    def later(self, session_id: str, at_us: int, revision: int) -> None:
        """Looks at the session's entry of ``revision`` again at ``at_us`` (its wake job
        could not be published, or it could not be deleted); not an entry that replaced
        it, which keeps its own deadline (a later parking is not woken early)."""
        known = self.entries.get(session_id)
        if known is not None and known[0] == revision:
            heapq.heappush(self._heap, (at_us, session_id, revision))

    def due(self, now_us: int, busy: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """The sessions whose deadline has passed (each once; stale heap items skipped).
        A session in ``busy`` (a wake of it in flight) is held until ``release``: its entry
        may have been replaced meanwhile by a later parking, whose deadline must not be
        lost with the wake of the earlier one."""
        out = []
        while self._heap and self._heap[0][0] <= now_us:
            item = heapq.heappop(self._heap)
            _, sid, revision = item
            known = self.entries.get(sid)
            if known is None or known[0] != revision:
                continue
            if sid in busy:
                self._held.setdefault(sid, []).append(item)
            else:
                out.append(sid)
        return out

    def release(self, session_id: str) -> None:
        """The wake of the session is over: its held deadlines come due again."""
        for item in self._held.pop(session_id, []):
            heapq.heappush(self._heap, item)

    def next_deadline(self) -> int | None:
        while self._heap:
            _, sid, revision = self._heap[0]
            known = self.entries.get(sid)
            if known is not None and known[0] == revision:
                return self._heap[0][0]
            heapq.heappop(self._heap)  # forgotten or replaced since
        return None

    def woken_by(
        self, session_id: str, inbox_seq: int, headers: Mapping[str, str] | None = None
    ) -> bool:
        """Whether an inbox message at ``inbox_seq`` with ``headers`` wakes the session: one
        past what it read that its wait takes, or a stop request (Entry.woken_by)."""
        known = self.entries.get(session_id)
        return known is not None and inbox_seq > known[1].inbox_seq and known[1].woken_by(headers)


class Waker:
    IDLE = 5.0  # seconds between looks at the heap when nothing changes
    RETRY = 1.0  # seconds before a wake job that could not be published is tried again
    PURGE_EVERY = 10.0  # seconds between purges of the delete markers of woken entries
    SCAN = 1000  # inbox messages looked at as an entry is learned (more: it wakes)

    def __init__(self, nc: Client) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.parked = Parked()
        self.changed = asyncio.Event()
        self._waking: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._kv: Any = None
        self._inbox: Any = None
        self._inbox_starting: asyncio.Lock = asyncio.Lock()
        self._purged_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Wakes sessions until ``stop``; starts over after a failure (NATS away)."""
        while not stop.is_set():
            try:
                await self._run(stop)
            except Exception as e:
                log.warning("waker: %r; starting over", e)
                self.parked = Parked()
                self._inbox = None
                await waitfor.pause(stop, self.RETRY)

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
                for sid in self.parked.due(timefmt.now_us(), self._waking):
                    self.wake(sid, "its deadline passed")
                await self._purge()
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
                self.parked.deleted(e.key, e.revision)
                continue
            try:
                entry = Entry.decode(e.value or b"")
            except ValueError as err:
                log.error("parked session %s: its entry is malformed (%s); skipped", e.key, err)
                continue
            self.parked.learn(e.key, e.revision, entry)
            self.changed.set()
            self._spawn(self._look_at_inbox(e.key, e.revision, entry))

    async def _purge(self) -> None:
        """Purges the delete markers of woken entries (else they stay in the bucket, and
        every waker reads them all as it starts). Each purge takes the key's messages up to
        its marker only: an entry put since (the session parked again) stays."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._purged_at < self.PURGE_EVERY:
            return
        self._purged_at = loop.time()
        markers = self.parked.take_markers()
        if markers:
            self._spawn(self._purge_markers(markers))

    async def _purge_markers(self, markers: dict[str, int]) -> None:
        stream = f"KV_{subjects.BUCKET_PARKED}"
        for sid, revision in markers.items():
            subject = f"$KV.{subjects.BUCKET_PARKED}.{sid}"
            try:
                await self.js.purge_stream(stream, seq=revision + 1, subject=subject)
            except Exception as e:  # another waker's purge, or NATS away: purged later
                log.debug("waker: marker of %s not purged: %r", sid, e)
        log.debug("waker: purged %d delete markers", len(markers))

    async def _look_at_inbox(self, session_id: str, revision: int, entry: Entry) -> None:
        """Wakes a session just learned of whose inbox got a message while it parked (one
        its wait takes, or a stop request). A look that fails (JetStream busy or away) is
        tried again, for as long as the entry is the one known: this look is the only one
        that sees a message that came before the waker learned the entry (a later one is
        seen as it comes), so given up, such a session would sleep until its deadline, or
        for good without one."""
        while True:
            try:
                await self._look_once(session_id, revision, entry)
                return
            except Exception as e:
                known = self.parked.entries.get(session_id)
                if known is None or known[0] != revision:
                    return  # woken meanwhile, or parked again (that parking is looked at)
                pause = self.RETRY * (1 + random.random())  # (many entries fail together)
                log.warning(
                    "parked session %s: its inbox not looked at yet (%r); again in %.1f s",
                    session_id,
                    e,
                    pause,
                )
                await asyncio.sleep(pause)

    async def _look_once(self, session_id: str, revision: int, entry: Entry) -> None:
        await self._read_inboxes()  # from now on, a new message is seen as it comes
        subject = subjects.inbox_subject(session_id)
        try:
            last = await self.js.get_last_msg(subjects.STREAM_INBOX, subject)
        except NotFoundError:
            return
        if (last.seq or 0) <= entry.inbox_seq:
            return
        woken = entry.woken_by(last.headers)
        seq = entry.inbox_seq + 1
        for _ in range(self.SCAN):  # the messages before the last, oldest first
            if woken:
                break
            try:
                msg = await self.js.get_msg(
                    subjects.STREAM_INBOX, seq=seq, subject=subject, next=True
                )
            except NotFoundError:
                break
            if (msg.seq or 0) >= (last.seq or 0):
                break
            woken, seq = entry.woken_by(msg.headers), (msg.seq or seq) + 1
        else:
            woken = True  # too many to look at: the woken attempt reads them
        known = self.parked.entries.get(session_id)
        if woken and known is not None and known[0] == revision:
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
        if self.parked.woken_by(sid, msg.metadata.sequence.stream, msg.headers):
            self.wake(sid, "a message reached its inbox")

    def wake(self, session_id: str, why: str) -> None:
        if session_id in self._waking or session_id not in self.parked.entries:
            return
        self._waking.add(session_id)
        self._spawn(self._wake(session_id, why))

    def _again(self, session_id: str, revision: int) -> None:
        """The wake of the session's entry of ``revision`` is tried again in ``RETRY`` s."""
        self.parked.later(session_id, timefmt.now_us() + int(self.RETRY * 1e6), revision)
        self.changed.set()

    async def _wake(self, session_id: str, why: str) -> None:
        known = self.parked.entries.get(session_id)
        try:
            if known is None:
                return
            revision, entry = known
            try:
                job = entry.wake_job()
                await bus.publisher(self.nc).publish(
                    subjects.job_subject(job.project_id, session_id),
                    wire.encode(job),
                    headers=wake_headers(entry, session_id),
                )
            except Exception as e:  # NATS away: again in a while (the entry stays)
                log.warning("parked session %s: not woken yet: %r", session_id, e)
                self._again(session_id, revision)
                return
            log.info("session %s wakes: %s", session_id, why)
            try:
                await self._kv.delete(session_id, last=revision)
            except Exception as e:
                if not (isinstance(e, APIError) and bus.is_wrong_last(e)):
                    # NATS away, a timeout: the entry stays, so the session is woken again
                    # in a while and the delete tried again (its wake job then a duplicate,
                    # or a stale one that runners drop). Else it stayed for good: woken
                    # again by every dispatcher that starts.
                    log.warning(
                        "parked session %s: woken; its entry not deleted yet: %r", session_id, e
                    )
                    self._again(session_id, revision)
                    return
                # another waker woke it first (or the session parked again meanwhile)
            self.parked.forget(session_id, revision)
        except Exception:  # a task's one broad catch: the watch tells what happened
            log.exception("parked session %s: waking failed", session_id)
        finally:
            self._waking.discard(session_id)
            self.parked.release(session_id)
            self._after_wake(session_id, known[0] if known is not None else None)

    def _after_wake(self, session_id: str, woken: int | None) -> None:
        """The session parked again while it was being woken (its entry replaced by a later
        parking's): what came meanwhile (a due deadline, an inbox message) was not acted on
        then; look again."""
        now = self.parked.entries.get(session_id)
        if now is None or now[0] == woken:
            return
        self.changed.set()  # its held deadline, if any, is in the heap again
        self._spawn(self._look_at_inbox(session_id, *now))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
