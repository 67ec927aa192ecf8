"""When ``ak up`` restarts a service process that ended: at once, unless it is in a crash loop.

A process killed from outside (SIGKILL, SIGTERM, ...) after it got going did nothing wrong:
it is restarted at once, however often that happens, since every second without it is a
second of refused webhooks or stalled sessions. A start *fails* when the process exits by
itself with an error (or dies of a crash signal), or ends within ``QUICK`` seconds of
starting for any reason. Failed starts in a row (``CRASH_LOOP`` of them) make a crash loop:
restarting such a process at once would only burn CPU and fill the log, so each restart
waits, doubling from ``FIRST_BACKOFF`` up to ``MAX_BACKOFF``. A run of ``HEALTHY_AFTER``
seconds or a start that did not fail ends the loop.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

QUICK = 2.0
CRASH_LOOP = 3
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 10.0
HEALTHY_AFTER = 30.0
# Signals someone sends to stop or kill a process (an operator, the OOM killer, a chaos
# test); any other signal is the process's own crash (SIGSEGV, SIGABRT, ...).
KILLS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
SETTING_ERROR = 2  # a service's exit code for what the operator must fix (akcore.service)


def describe(code: int, ran: float) -> str:
    """``killed by SIGKILL after 12.3s``, ``died of SIGSEGV after 1.0s`` or ``exited with
    code 1 after 0.8s``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"killed by {name}" if -code in KILLS else f"died of {name}"
    else:
        how = f"exited with code {code}"
    if code == SETTING_ERROR:
        how += " (a setting to fix: its message is above)"
    return f"{how} after {ran:.1f}s"


def failed(code: int, ran: float) -> bool:
    """Whether a start failed (see the module's docstring)."""
    if ran < QUICK:
        return True
    if code < 0:
        return -code not in KILLS
    return code != 0


@dataclass
class Restarts:
    """The restart policy of one supervised process: ``delay, why = policy.after(code, ran)``
    each time it ends."""

    failures: int = 0  # failed starts in a row

    def after(self, code: int, ran: float, how: str = "") -> tuple[float, str]:
        """How long to wait before restarting a process that ended with ``code`` (negative:
        the signal that killed it) after running ``ran`` seconds, and what to tell the user
        (``how`` it ended, when not from its code)."""
        what = how or describe(code, ran)
        if ran >= HEALTHY_AFTER or not failed(code, ran):
            self.failures = 0
        if not failed(code, ran):
            return 0.0, what
        self.failures += 1
        if self.failures < CRASH_LOOP:
            return 0.0, what
        delay = min(FIRST_BACKOFF * 2 ** (self.failures - CRASH_LOOP), MAX_BACKOFF)
        return delay, (
            f"{what}, {self.failures} failed starts in a row (each exited by itself or "
            f"within {QUICK:g}s of starting): crash loop"
        )
