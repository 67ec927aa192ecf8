"""The common entry point of every service: settings, logging, signals, then ``run``."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable

import nats.errors

from .config import ENV_EVENT_LOOP, Settings, log_level, or_default
from .errors import AKError, Unavailable

Run = Callable[[Settings, asyncio.Event], Awaitable[None]]

# Seconds a service that ends by itself (``end``) has to stop as on SIGTERM before its
# process exits regardless (a shutdown that waits on NATS would otherwise wait forever).
END_GRACE = 10.0
LOST = 1  # its exit code: not a setting (2), a failure its supervisor restarts it after

log = logging.getLogger(__name__)


class _Ending:
    """How the service ``main`` runs ends by itself; one at a time in a process."""

    def __init__(self) -> None:
        self.why = ""
        self._stop: asyncio.Event | None = None

    def running(self, stop: asyncio.Event | None) -> None:
        self._stop = stop

    def end(self, why: str) -> None:
        if self._stop is None:  # run in-process (a test): nothing to exit
            log.error("%s", why)
            return
        if self.why:
            return
        self.why = why
        log.error("%s; exiting so that the supervisor restarts this service", why)
        self._stop.set()  # the shutdown of SIGTERM: a runner leaves its sessions' jobs
        # A thread, not the loop: it fires even if the loop is stuck.
        timer = threading.Timer(END_GRACE, _exit_now)
        timer.daemon = True
        timer.start()


def _exit_now() -> None:
    log.error("still stopping after %gs: exiting now", END_GRACE)
    os._exit(LOST)


_ending = _Ending()


def end(why: str) -> None:
    """Ends the service ``main`` runs with exit code 1, which its supervisor restarts:
    for a loss it cannot mend by itself (its NATS connection closed for good). It stops
    as on SIGTERM, for at most ``END_GRACE`` seconds. ``why``: one line, logged. Outside
    ``main`` (a service a test runs in-process) it only logs."""
    _ending.end(why)


def setup_logging(service: str) -> None:
    level = or_default(log_level, "INFO")
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {service:<10} %(levelname)-5s %(name)s: %(message)s",
    )
    logging.getLogger("nats").setLevel(logging.WARNING)


def main(service: str, run: Run) -> None:
    """Runs a service until SIGINT or SIGTERM, then lets it shut down cleanly (exit code
    0), or until it ends by itself (``end``: exit code 1)."""
    setup_logging(service)
    try:
        settings = Settings.from_env()
    except ValueError as e:
        logging.getLogger(service).error("%s", e)
        sys.exit(2)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        _ending.running(stop)
        try:
            await run(settings, stop)
        finally:
            _ending.running(None)

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_main())
    except Exception as e:
        if _ending.why:  # said: what failed as it stopped is what it lost
            logging.getLogger(service).debug("while ending: %r", e)
            sys.exit(LOST)
        if _not_answered(e):
            # NATS or the store not answering (a NATS node frozen as the service started):
            # it passes, and the supervisor starts the service again; a traceback says no more.
            log = logging.getLogger(service)
            log.error(
                "stopped: NATS or the store did not answer (%s: %s); exiting so that the "
                "supervisor starts this service again",
                type(e).__name__,
                e or "no answer",
            )
            log.debug("what stopped it", exc_info=e)
            sys.exit(1)
        if not isinstance(e, AKError):
            raise
        # a setting the operator must fix: said once, plainly
        logging.getLogger(service).error("%s", e.message)
        sys.exit(1 if isinstance(e, Unavailable) else 2)  # (what passes: not a setting)
    if _ending.why:
        sys.exit(LOST)


def _not_answered(e: BaseException) -> bool:
    """NATS (or a service over it) did not answer, or could not be reached: what passes.
    Not any error of nats-py's (a programming error is one too: it keeps its traceback)."""
    return isinstance(
        e,
        (
            TimeoutError,  # (asyncio's too)
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.errors.NoServersError,
            nats.errors.ConnectionClosedError,
        ),
    )


def settle_heap() -> None:
    """Called once a service is up: takes what it made while starting (its modules, clients,
    settings: ~50,000 objects in the runner) out of the garbage collector's sight. A full
    collection then walks only what came later; before, each one walked everything and
    held the event loop for ~20-26 ms (in the runner, in the middle of a replay)."""
    gc.collect()
    gc.freeze()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (faster I/O for every message), unless ``AK_EVENT_LOOP=asyncio``."""
    # (as ``Settings`` checks it: any case, spaces around)
    if os.environ.get(ENV_EVENT_LOOP, "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
