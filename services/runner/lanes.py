"""A runner's share of ``AK_JOBS``, lane by lane, so that no project's flood starves the rest.

Jobs go to one of ``subjects.JOB_LANES`` lanes by their project (``subjects.job_lane``), each
read through a durable consumer of its own that all runners share (jobs published by earlier
versions, without a lane, through one more). A single queue made a project's 10,000 queued
sessions a wait of their whole run for every other project's next session; with lanes a flood
holds up only the projects that share its lane.

A runner keeps at most one pull request open on each lane and hands its free places out:

- A lane that has not had a job lately (its last request came back empty, or none was sent)
  keeps a request for one job open even when every place is taken: a job arriving there starts
  at once. So at most one job per lane runs beyond the runner's places (``probes``).
- The free places go to the lanes that had jobs, one share each, starting from a lane that
  moves on each time: two projects flooding their lanes get about half of the places each, and
  a place that frees goes to each of them in turn. A lane that had jobs asks for nothing while
  no place is free; its jobs wait in JetStream, where another runner may take them.
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
    """What the plan needs of one lane's puller."""

    asking: bool  # a request is open
    idle: bool  # no job came with its last request (or none was sent)
    held: int  # jobs delivered and not taken, and those its open request may still deliver
    probing: bool  # its last request was a probe (beyond the free places)


def plan(lanes: list[Lane], free: int, start: int) -> tuple[list[tuple[int, int]], int]:
    """The requests to send now: (lane, jobs asked for), and the lane to start from next time.

    ``free``: places not running a session (negative when probes' jobs run beyond them);
    ``start``: the lane that comes first among those that had jobs."""
    asks: list[tuple[int, int]] = []
    promised = sum(lane.held for lane in lanes if not lane.probing)
    in_probes = sum(lane.held for lane in lanes if lane.probing)
    # Probes: one job each, beyond the free places, while fewer jobs than lanes run beyond.
    beyond = max(0, -free)
    for i, lane in enumerate(lanes):
        if not lane.asking and lane.idle and beyond + in_probes < len(lanes):
            asks.append((i, 1))
            in_probes += 1
    # The free places not promised yet, shared among the lanes that had jobs, in turn.
    room = free - promised
    turn = [(start + k) % len(lanes) for k in range(len(lanes))]
    waiting = [i for i in turn if not lanes[i].asking and not lanes[i].idle]
    for k, i in enumerate(waiting):
        if room <= 0:
            break
        share = -(-room // (len(waiting) - k))  # ceil: the first lanes in turn get the rest
        asks.append((i, share))
        room -= share
        start = (i + 1) % len(lanes)
    return asks, start


class Lanes:
    """Pullers on every consumer of ``AK_JOBS``, asked according to ``plan``.

    ``wake`` is set whenever a job arrives or a request ends (the caller may set it too)."""

    def __init__(self, pullers: list[bus.Puller], wake: asyncio.Event) -> None:
        self.pullers, self.wake = pullers, wake
        self._probing = [False] * len(pullers)
        self._start = 0

    @classmethod
    async def bind(cls, nc: Client, expires: float, wake: asyncio.Event) -> Lanes:
        pullers = [
            await bus.Puller.of(nc, subjects.STREAM_JOBS, name, expires, True, wake)
            for name in subjects.RUNNER_CONSUMERS
        ]
        return cls(pullers, wake)

    def _state(self, i: int) -> Lane:
        p = self.pullers[i]
        return Lane(p.asking, p.idle, p.held, self._probing[i])

    async def ask(self, free: int) -> None:
        """Sends the requests ``plan`` says for ``free`` places."""
        lanes = [self._state(i) for i in range(len(self.pullers))]
        asks, self._start = plan(lanes, free, self._start)
        for i, n in asks:
            self._probing[i] = lanes[i].idle
            try:
                await self.pullers[i].ask(n)
            except Exception as e:  # disconnected: asked again on the caller's next turn
                log.warning("pull request failed: %s", e)
                return

    def take_ready(self) -> list[tuple[Msg, float]]:
        """The jobs delivered, each with when the request that delivered it was sent."""
        return [(msg, p.requested_at(msg)) for p in self.pullers for msg in p.take_ready()]

    async def close(self) -> None:
        for p in self.pullers:
            await p.close()
