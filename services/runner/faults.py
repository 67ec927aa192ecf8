"""Fault injection for tests: the runner crashes, stalls or stops heartbeating at a chosen
point of a chosen session, so crash tests need no sleep timed to land in a window.

Off unless the test setting ``AK_TEST__FAULTS`` is set: rules separated by ``;``, each
``<action> <point> [step=N] [entry=<file.py:function>] [attempt=N|any]``:

  actions  ``crash`` (SIGKILL of the runner itself), ``stall=S`` (blocks the runner's event
           loop for S seconds, as a synchronous call would), ``no_heartbeats`` (the session's
           heartbeats stop from there on), ``forgotten_heartbeats`` (from there on they are
           not sent, yet the attempt takes them as confirmed: as when the JetStream consumer
           leader that confirmed them lost them in a leader change, so that the job is
           delivered again while this attempt still holds it), ``unavailable`` (the
           attempt fails as when the store or NATS is away: it is journaled as a retry and
           the job naked), ``hold``
           (the attempt waits, the runner going on, until the file named by ``file=`` exists,
           environment variables expanded: the test makes it when it has done what must
           happen meanwhile; without ``file=``, until a stop request reaches the attempt;
           only at the points ``step``, ``read`` and ``parking``: held at ``step``, a live
           attempt keeps its job, heartbeating, its worker waiting for the go-ahead),
           ``nats_closed`` (the NATS server closes the runner's connection for good: a
           message over its ``max_payload`` is announced on it, raw, which the server
           answers with ``-ERR 'Maximum Payload Violation'`` and a close; nats-py does not
           reconnect after such an error)
  points   ``step`` (the worker asks for durable step N, before anything is done),
           ``journaling`` (the record of step N is about to be written), ``journaled`` (it
           was acknowledged, the worker not answered yet), ``started`` (the attempt's
           ``started`` record was acknowledged, in a first attempt while its worker starts;
           no step), ``ended`` (the ``ended`` record was acknowledged, the parent not told
           yet; no step), ``parked`` (a waiting
           session's ``parked`` record was acknowledged, its AK_PARKED entry not put yet; no
           step), ``registered`` (that entry was put, the job not acked yet; no step),
           ``read`` (a replaying attempt has read the journal, nothing written yet; no step),
           ``parking`` (a waiting session has given up its handler's wait to park, its
           ``parked`` record not written yet; no step)

A rule fires in the first attempt only unless it says ``attempt=any`` (or another number).
Example: ``crash journaled step=1 entry=crash.py:in_sleep``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass

from akcore import subjects
from akcore.errors import AKError, Unavailable
from nats.aio.client import Client

log = logging.getLogger(__name__)

ENV = "AK_TEST__FAULTS"
ACTIONS = (
    "crash",
    "stall",
    "no_heartbeats",
    "forgotten_heartbeats",
    "unavailable",
    "hold",
    "nats_closed",
)
HEARTBEAT_ACTIONS = ("no_heartbeats", "forgotten_heartbeats")
HOLD_POINTS = ("step", "read", "parking")  # where the runner waits out a ``hold`` rule
POINTS = (
    "step",
    "journaling",
    "journaled",
    "started",
    "ended",
    "parked",
    "registered",
    "read",
    "parking",
)


@dataclass(frozen=True)
class Rule:
    action: str
    point: str
    seconds: float = 0.0
    step: int = 0  # 0: any step
    entry: str = ""  # "": any session
    attempt: int = 1  # 0: any attempt
    file: str = ""  # hold: until this file exists

    def matches(self, point: str, step: int, entry: str, attempt: int) -> bool:
        return (
            point == self.point
            and self.step in (0, step)
            and self.entry in ("", entry)
            and self.attempt in (0, attempt)
        )


def parse(text: str) -> list[Rule]:
    """The rules of an ``AK_TEST__FAULTS`` value; raises ValueError naming a bad one."""
    rules = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        words = part.split()
        if len(words) < 2:
            raise ValueError(f"{ENV}: {part!r} needs an action and a point")
        action, _, seconds = words[0].partition("=")
        if action not in ACTIONS or words[1] not in POINTS:
            raise ValueError(f"{ENV}: {part!r}: actions are {ACTIONS}, points {POINTS}")
        if action == "hold" and words[1] not in HOLD_POINTS:
            raise ValueError(f"{ENV}: {part!r}: hold is a fault of the points {HOLD_POINTS}")
        opts = dict(w.partition("=")[::2] for w in words[2:])
        attempt = opts.get("attempt", "1")
        rules.append(
            Rule(
                action=action,
                point=words[1],
                seconds=float(seconds or 0),
                step=int(opts.get("step", 0)),
                entry=opts.get("entry", ""),
                attempt=0 if attempt == "any" else int(attempt),
                file=opts.get("file", ""),
            )
        )
    return rules


class Faults:
    """The rules in force in this runner (none outside tests); ``nc``: the runner's NATS
    connection (what ``nats_closed`` has the server close)."""

    def __init__(self, rules: list[Rule], nc: Client | None = None) -> None:
        self.rules = rules
        self.nc = nc

    @classmethod
    def from_env(cls, nc: Client | None = None) -> Faults:
        try:
            return cls(parse(os.environ.get(ENV, "")), nc)
        except ValueError as e:  # said once, as the runner starts (akcore.service)
            raise AKError(str(e)) from None

    def armed(self, point: str, entry: str, attempt: int, step: int = 0) -> bool:
        """Whether a rule applies at this point (the runner then gives no go-ahead in
        advance for the step: the worker must ask, so that the rule fires before it starts)."""
        return any(rule.matches(point, step, entry, attempt) for rule in self.rules)

    def at(self, point: str, entry: str, attempt: int, step: int = 0) -> str:
        """Applies the rules for this point; what becomes of the session's heartbeats from
        here on: ``no_heartbeats``, ``forgotten_heartbeats`` or "" (nothing)."""
        heartbeats = ""
        for rule in self.rules:
            if not rule.matches(point, step, entry, attempt):
                continue
            log.warning("fault injected: %s at %s of step %d (%s)", rule.action, point, step, entry)
            if rule.action == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            elif rule.action == "stall":
                time.sleep(rule.seconds)  # on purpose: the event loop stalls
            elif rule.action == "unavailable":
                raise Unavailable(f"fault injected at {point} of step {step}")
            elif rule.action in HEARTBEAT_ACTIONS:
                heartbeats = rule.action
            elif rule.action == "nats_closed":
                self._close_nats()
        return heartbeats

    def _close_nats(self) -> None:
        """Announces a message one byte over the server's limit on the connection's own
        socket (nats-py's publish refuses it): the server refuses it by closing."""
        if self.nc is None:
            raise RuntimeError("nats_closed: the runner's faults have no NATS connection")
        size = self.nc.max_payload + 1
        self.nc._transport.write(f"PUB {subjects.SPANS} {size}\r\n".encode())  # type: ignore[union-attr]

    async def hold(
        self, point: str, entry: str, attempt: int, stopped: asyncio.Event | None = None
    ) -> None:
        """Applies the rules for this point: the others as ``at``, then the ``hold`` ones
        (``held``), at a point with no step where heartbeats cannot be stopped."""
        if heartbeats := self.at(point, entry, attempt):
            raise RuntimeError(f"{heartbeats} is not a fault of point {point}")
        await self.held(point, entry, attempt, stopped=stopped)

    async def held(
        self,
        point: str,
        entry: str,
        attempt: int,
        step: int = 0,
        stopped: asyncio.Event | None = None,
    ) -> None:
        """Waits out the ``hold`` rules for this point (``at`` applies the others; it logs
        these too); ``stopped``: the attempt's stop request (what a rule without a file
        waits for)."""
        for rule in self.rules:
            if rule.action != "hold" or not rule.matches(point, step, entry, attempt):
                continue
            if not rule.file:
                if stopped is not None:
                    await stopped.wait()
                continue
            path = os.path.expandvars(rule.file)
            while not os.path.exists(path):  # the test's go-ahead
                await asyncio.sleep(0.05)
