"""Go-aheads in advance: a real worker that holds one starts its next live activity without
asking (its step and its outcome come with no reply in between); one that holds none, or
an expired one, or whose clock is not its runner's, asks, as a runner answers."""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import pytest
from ak_runner.worker import WorkerProcess

CODE = """\
import random


def two(event):
    a = random.random()
    b = random.random()
    return 7
"""


async def _conversation(tmp_path: Path, go_until: float | None, clock: float | None) -> list[str]:
    """Runs ``two`` in a real worker, answering as the runner does: each asked step gets its
    go, each outcome its ack (with ``go_until``, when given); the start frame has the
    runner's ``clock`` (when given). The frames both ways, in order."""
    (tmp_path / "g.py").write_text(CODE)
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    init = {"data": {}, "event_type": "post", "event_id": "evt_1", "replay": {}}
    start = {
        "type": "start",
        "code_dir": str(tmp_path),
        "entrypoint": "g.py:two",
        "session_id": "ses_1",
        "is_durable": True,
    }
    if clock is not None:
        start["clock"] = clock
    await w.send(start, pickle.dumps(init))
    seen = []
    async for header, _ in w.frames():
        kind = header["type"]
        if kind == "step":
            granted = " granted" if header.get("granted") else ""
            seen.append(f"step {header['step']}{granted}")
            if not granted:
                await w.send({"type": "step", "go": True})
                seen.append("-> go")
        elif kind == "activity":
            seen.append(f"activity {header['step']}")
            ack = {"type": "ack"} if go_until is None else {"type": "ack", "go_until": go_until}
            await w.send(ack)
            seen.append("-> ack")
        elif kind == "done":
            seen.append(f"done {header['ok']}")
            break
    w.kill()
    await w.close()
    return seen


async def test_a_worker_with_a_go_ahead_starts_its_activity_without_asking(
    tmp_path: Path,
) -> None:
    seen = await _conversation(tmp_path, time.monotonic() + 60, time.monotonic())
    assert seen == [
        "step 1",
        "-> go",
        "activity 1",
        "-> ack",  # with a go-ahead for step 2
        "step 2 granted",  # sent, not waited for: the activity runs meanwhile
        "activity 2",
        "-> ack",
        "done True",
    ]


ASKS = ["step 1", "-> go", "activity 1", "-> ack", "step 2", "-> go", "activity 2", "-> ack"]


@pytest.mark.parametrize(
    ("go_until", "clock_off"),
    [
        (None, 0.0),  # none given
        (-0.001, 0.0),  # expired before the worker starts the activity
        (60.0, 10.0),  # the worker's clock reads behind the runner's
        (60.0, -10.0),  # ... or far ahead of it (another time namespace)
    ],
    ids=["none", "expired", "clock-behind", "clock-ahead"],
)
async def test_a_worker_asks_without_a_go_ahead_it_may_use(
    tmp_path: Path, go_until: float | None, clock_off: float
) -> None:
    until = None if go_until is None else time.monotonic() + go_until
    seen = await _conversation(tmp_path, until, time.monotonic() + clock_off)
    assert seen == [*ASKS, "done True"]


async def test_a_worker_started_without_the_runners_clock_asks(tmp_path: Path) -> None:
    """A runner that sends no clock (an older one): its worker never uses go-aheads."""
    seen = await _conversation(tmp_path, time.monotonic() + 60, None)
    assert seen == [*ASKS, "done True"]
