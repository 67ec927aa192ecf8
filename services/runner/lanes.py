"""A runner's share of ``AK_JOBS``, lane by lane, so that no project's flood starves the rest.

Jobs go to one of ``subjects.JOB_LANES`` lanes by their project (``subjects.job_lane``), each
read through a durable consumer of its own that all runners share (jobs published by earlier
versions, without a lane, through one more). On a single queue a project's 10,000 queued
sessions made every other project's next session wait for all of them; with lanes a flood
holds up only the projects that share its lane.

A runner keeps at most one pull request open per lane, and knows of each lane how many of its
sessions run here (``live``) and whether jobs wait in it (``queued``: JetStream says with each
job how many are left behind it; a request that expires with room left says none are):

- Free places go to the lanes with jobs queued, one at a time to the lane with the fewest
  sessions here (ties in turn): two floods get half of the places each, whatever the length
  of their sessions, and a lane that starts late gets the places that free until it holds as
  many as the others.
- The places left go to the lanes with sessions here and no job queued, in one request each
  that takes their jobs as they come (as a single queue's request did).
- A lane with no session here, or with no job queued and fewer sessions here than an even
  share of the places, keeps a request for one job open (a probe) even when every place is
  taken: a quiet project's session starts at once, and so does the first of a backlog in a
  lane that has no session here. Probes run at most ``len(lanes)`` jobs beyond the places.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from akcore import bus, subjects
from nats.aio.client import Client
from nats.aio.msg import Msg

log = logging.getLogger(__name__)


@dataclass
class Lane:
    """What the plan needs to know of one lane."""

    asking: bool  # a request is open
    held: int  # what the open request may still deliver
    probing: bool  # the open request is a probe (beyond the free places)
    queued: int  # jobs waiting in the lane (as last heard)
    live: int  # sessions from this lane running here


@dataclass(frozen=True)
class Ask:
    lane: int
    jobs: int
    probe: bool  # beyond the free places
    brief: bool = False  # places left to a lane with nothing queued: held for a second only


# Seconds a request for the places left (``Ask.brief``) holds them before it expires.
BRIEF = 1.0


def plan(
    lanes: list[Lane], free: int, start: int, places: int, spare: int
) -> tuple[list[Ask], int]:
    """The requests to send now, and the lane that comes first among equals next time.

    ``free``: places not running a session (negative when probes' jobs run beyond them);
    ``places``: the runner's places (AK_RUNNER__CONCURRENCY); ``spare``: the most jobs
    that may run beyond them (at most one per lane; fewer when the runner's workers are
    nearly all taken by waiting sessions)."""
    n = len(lanes)
    room = free - sum(lane.held for lane in lanes if lane.asking and not lane.probing)
    shares = [0] * n
    order = [(start + k) % n for k in range(n)]
    wanting = [i for i in order if lanes[i].queued and not lanes[i].asking]
    while room > 0 and wanting:
        i = min(wanting, key=lambda j: lanes[j].live + shares[j])  # first of equals in turn
        shares[i] += 1
        room -= 1
        wanting.remove(i)
        if shares[i] < lanes[i].queued:
            wanting.append(i)  # the next place among equals goes to the next lane
        start = (i + 1) % n
    # The places left go to lanes running sessions here with nothing queued (as last
    # heard): one request takes their jobs as they come (a probe per job costs a request
    # per job); it holds those places until it expires, 5 s at most, before a lane with a
    # backlog gets them.
    active = [
        i
        for i in order
        if not lanes[i].asking and not shares[i] and lanes[i].live > 0 and not lanes[i].queued
    ]
    brief = set()
    for k, i in enumerate(active):
        if room <= 0:
            break
        share = -(-room // (len(active) - k))
        shares[i], room = share, room - share
        brief.add(i)
        start = (i + 1) % n
    asks = [Ask(i, shares[i], False, i in brief) for i in order if shares[i]]
    # Probes: for lanes with no session here, and for lanes with nothing queued that a
    # free place was not left to, or, the runner full, that hold less than an even share
    # of the places among the lanes that have sessions here or jobs queued (a flood taking
    # its jobs as they come is not quiet). Each takes a free place not promised yet, or,
    # none left, one beyond the places while every place taken and every request
    # delivering would run fewer than ``spare`` jobs beyond them. (Each lane has one
    # request at most, and those for more than one job promise free places only: what
    # runs beyond the places never exceeds the number of lanes.)
    beyond = -free + sum(lane.held for lane in lanes if lane.asking) + sum(shares)
    busy = sum(1 for lane in lanes if lane.live or lane.queued)
    even = places / max(busy, 1)
    for i in order:
        lane = lanes[i]
        quiet = lane.live == 0 or (not lane.queued and (free > 0 or lane.live < even))
        if lane.asking or shares[i] or not quiet:
            continue
        if room > 0:
            room -= 1
            start = (i + 1) % n  # a scarce free place goes to each lane in turn
        elif beyond >= spare:
            continue
        beyond += 1
        asks.append(Ask(i, 1, True))
    return asks, start


class Lanes:
    """Pullers on every consumer of ``AK_JOBS``, asked according to ``plan``.

    ``wake`` is set whenever a job arrives or a request ends (the caller sets it too, when
    a session ends)."""

    def __init__(
        self, pullers: list[bus.Puller], wake: asyncio.Event, places: int, waiting: list[int]
    ) -> None:
        self.pullers, self.wake, self.places = pullers, wake, places
        self.live = [0] * len(pullers)  # sessions taken from each lane, running or waiting
        self.waiting = waiting  # of those, the ones waiting (``Admission.waiting_in``)
        self._probing = [False] * len(pullers)
        self._start = 0

    @classmethod
    async def bind(
        cls, nc: Client, expires: float, wake: asyncio.Event, places: int, waiting: list[int]
    ) -> Lanes:
        pullers = [
            await bus.Puller.of(nc, subjects.STREAM_JOBS, name, expires, True, wake)
            for name in subjects.RUNNER_CONSUMERS
        ]
        return cls(pullers, wake, places, waiting)

    def _state(self, i: int) -> Lane:
        p = self.pullers[i]
        # (A job published without a lane by an earlier version waits in its project's
        # lane's count: hence the floor.)
        running = max(0, self.live[i] - self.waiting[i])
        return Lane(p.asking, p.held, self._probing[i], p.pending, running)

    async def ask(self, free: int, workers: int) -> None:
        """Sends the requests ``plan`` says for ``free`` places, when ``workers`` more
        sessions may live on this runner (waiting ones included)."""
        lanes = [self._state(i) for i in range(len(self.pullers))]
        spare = max(0, min(len(lanes), workers - max(free, 0)))
        asks, self._start = plan(lanes, free, self._start, self.places, spare)
        for ask in asks:
            self._probing[ask.lane] = ask.probe
            try:
                await self.pullers[ask.lane].ask(ask.jobs, BRIEF if ask.brief else None)
            except Exception as e:  # disconnected: asked again on the caller's next turn
                log.warning("pull request failed: %s", e)
                return

    @property
    def ready(self) -> int:
        return sum(p.ready for p in self.pullers)

    def take_ready(self) -> list[tuple[int, Msg, float]]:
        """The jobs delivered, each with its lane (counted as live from now on, until
        ``ended``) and when the request that delivered it was sent."""
        taken = []
        for i, p in enumerate(self.pullers):
            for msg in p.take_ready():
                self.live[i] += 1
                taken.append((i, msg, p.requested_at(msg)))
        return taken

    def ended(self, lane: int, _: object = None) -> None:
        """A session taken from ``lane`` is no longer running here."""
        self.live[lane] -= 1
        self.wake.set()

    def forget(self) -> None:
        """After a reconnect: what was heard of the lanes' queues may be old (requests lost
        with their replies); every lane is taken for quiet until it says otherwise."""
        for p in self.pullers:
            p.pending = 0

    async def close(self) -> None:
        for p in self.pullers:
            await p.close()
