"""Replay bookkeeping in the worker: step k of the handler looks up step k of the journal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class NonDeterminismError(BaseException):
    """The handler asked for a different step than the journal recorded.

    A BaseException so that a handler's ``except Exception`` cannot swallow it.
    """


@dataclass
class Replayer:
    """Recorded steps by number (``{"kind", "function", ...}``) and the count of recorded
    workflow prints. Steps past the journal's end are live."""

    steps: dict[int, dict[str, Any]] = field(default_factory=dict)
    prints: int = 0

    @property
    def last_step(self) -> int:
        return max(self.steps, default=0)

    def take(self, step: int, kind: str, function: str, where: str) -> dict[str, Any] | None:
        """The recorded outcome of ``step``, or None when it is live.

        Raises:
            NonDeterminismError: the journal has a different kind or function at ``step``.
        """
        rec = self.steps.get(step)
        if rec is None:
            return None
        if rec.get("kind") != kind or rec.get("function") != function:
            raise NonDeterminismError(
                f"non-determinism at {where}: step {step} of the journal is "
                f'{rec.get("kind")} "{rec.get("function")}", but the code now asks for '
                f'{kind} "{function}". A replayed handler must make the same calls in the same '
                "order: keep non-deterministic code (random values, clocks, I/O) inside "
                "activities and do not change the code of running sessions."
            )
        return rec

    def is_replayed_print(self, n: int) -> bool:
        return n <= self.prints
