"""Turns to install Python environments in: at most so many at once on a runner, and one at
a time for each holder (the projects of the API token limited to them that asked, or the
project of the session that needs it), handed out in the order asked among the holders
that have none.

Any number of environments were built at once: a token limited to one project had a runner
build twelve together, each allowed 4 GiB and 512 processes. With turns alone, first come
first served, one project's builds (a session each, on deployments of its own that differ
by a comment in requirements.txt) would fill the line and every turn, and another
project's deploy would wait behind all of them.

An environment is built once for all who need it: while it waits, each holder that comes to
need it may give it its turn (``Turns.joined``). It waited in the turns of the one that asked
first alone, and every other project's sessions with it, a turn free, while that one's other
build ran (up to the packages' time limit): the default environment after an upgrade, first
asked by a session of a project building another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from akcore.config import ENV_PACKAGES_BUILDS

Holder = frozenset[str]  # project ids; the empty one: no limit of its own (an unlimited token)


@dataclass
class _Waiting:
    holders: list[Holder]  # any of them may take the turn, the first asked first
    given: asyncio.Future[Holder]  # the holder whose turn it took


class Turns:
    """``size`` turns, one at a time for each holder but the empty one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._running: dict[Holder, int] = {}
        self._waiting: list[_Waiting] = []

    @property
    def busy(self) -> int:
        """Turns taken."""
        return sum(self._running.values())

    def _may_run(self, holder: Holder) -> bool:
        return self.busy < self.size and not (holder and self._running.get(holder))

    @contextlib.asynccontextmanager
    async def turn(self, holders: list[Holder], say: Callable[[str], None]) -> AsyncIterator[None]:
        """Waits for a turn of one of ``holders`` (``say`` says why, once, when it must),
        holds it while the caller builds. The caller may add holders to the list while it
        waits, then tells ``joined``."""
        waiting = _Waiting(holders, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)  # (behind those waiting already)
        self._hand_out()
        if not waiting.given.done():
            say(self._why_wait(holders[0]))
            try:
                await asyncio.shield(waiting.given)
            except asyncio.CancelledError:
                if waiting.given.done():  # given meanwhile: passed on
                    self._give_back(waiting.given.result())
                else:
                    self._waiting.remove(waiting)
                raise
        holder = waiting.given.result()
        try:
            yield
        finally:
            self._give_back(holder)

    def joined(self) -> None:
        """A waiting build has a holder more: it may take a turn of that one's now."""
        self._hand_out()

    def _why_wait(self, holder: Holder) -> str:
        if holder and self._running.get(holder):
            return (
                "waiting for a turn: another environment of this project is being built on "
                "this runner (one at a time for each project)"
            )
        return (
            f"waiting for a turn: {self.busy} environment(s) are being built on this runner "
            f"({ENV_PACKAGES_BUILDS})"
        )

    def _take(self, holder: Holder) -> None:
        self._running[holder] = self._running.get(holder, 0) + 1

    def _give_back(self, holder: Holder) -> None:
        self._running[holder] -= 1
        if not self._running[holder]:
            del self._running[holder]
        self._hand_out()

    def _hand_out(self) -> None:
        """Gives free turns to the builds waiting longest whose holders may run one."""
        for waiting in list(self._waiting):
            if self.busy >= self.size:
                return
            holder = next((h for h in waiting.holders if self._may_run(h)), None)
            if holder is not None:
                self._waiting.remove(waiting)
                self._take(holder)
                waiting.given.set_result(holder)
