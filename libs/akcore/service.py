"""The common entry point of every service: settings, logging, signals, then ``run``."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from .config import ENV_EVENT_LOOP, Settings, log_level, or_default
from .errors import AKError, Unavailable

Run = Callable[[Settings, asyncio.Event], Awaitable[None]]


def setup_logging(service: str) -> None:
    level = or_default(log_level, "INFO")
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {service:<10} %(levelname)-5s %(name)s: %(message)s",
    )
    logging.getLogger("nats").setLevel(logging.WARNING)


def main(service: str, run: Run) -> None:
    """Runs a service until SIGINT or SIGTERM, then lets it shut down cleanly."""
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
        await run(settings, stop)

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_main())
    except AKError as e:  # a setting the operator must fix: said once, plainly
        logging.getLogger(service).error("%s", e.message)
        sys.exit(1 if isinstance(e, Unavailable) else 2)  # (what passes: not a setting)


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
