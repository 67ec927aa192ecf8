"""Replay from a committed journal, with no NATS: bookkeeping, then a real worker process."""

from __future__ import annotations

import base64
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
from ak_runner.worker import WorkerProcess
from akcore import wire
from akcore.journal import replay_state
from autokitteh._replay import NonDeterminismError, Replayer

FIXTURES = Path(__file__).parents[1] / "fixtures" / "journals"

# The handler that wrote crash_in_sleep.json; the runner died during its sleep.
HANDLER = """\
import random
import time

import helper


def run(event):
    print("start")
    n = random.randint(1, 1_000_000)
    print("got", n)
    try:
        helper.fail()
    except KeyError as e:
        print("caught", repr(e))
    time.sleep(1)
    print("again", n)
    return n
"""
HELPER = """\
import os


@__import__("autokitteh").activity
def fail():
    open(os.environ["SIDE_EFFECTS"], "a").write("fail ran\\n")
    raise KeyError("k")
"""


def load(name: str) -> list[wire.JournalRecord]:
    records = []
    for raw in json.loads((FIXTURES / name).read_text()):
        data = raw["data"]
        if "result_b64" in data:
            data["result"] = base64.b64decode(data.pop("result_b64"))
        records.append(wire.JournalRecord(**raw))
    return records


def test_replay_state() -> None:
    state = replay_state(load("crash_in_sleep.json"))
    assert sorted(state.steps) == [1, 2, 3]
    assert state.steps[1]["kind"] == "activity" and state.steps[3]["kind"] == "sleep"
    assert state.prints == 3  # workflow prints; the activity's own print does not count
    assert state.next_seq == 9 and not state.ended


def test_replayer_take() -> None:
    r = Replayer(replay_state(load("crash_in_sleep.json")).steps, 2)
    assert pickle.loads(r.take(1, "activity", "randint", "h.py:9")["result"]) == 424242  # type: ignore[index]
    assert r.take(4, "activity", "anything", "h.py:20") is None  # past the end: live
    with pytest.raises(
        NonDeterminismError,
        match=r'at h.py:9: step 1 of the journal is activity "randint", '
        r'but the code now asks for activity "choice"',
    ):
        r.take(1, "activity", "choice", "h.py:9")
    with pytest.raises(NonDeterminismError, match='step 3 of the journal is sleep "sleep"'):
        r.take(3, "activity", "randint", "h.py:15")
    assert r.is_replayed_print(2) and not r.is_replayed_print(3)


async def _replay(tmp_path: Path, handler: str) -> list[tuple[dict[str, Any], bytes]]:
    (tmp_path / "h.py").write_text(handler)
    (tmp_path / "helper.py").write_text(HELPER)
    state = replay_state(load("crash_in_sleep.json"))
    env = {"PATH": "/usr/bin:/bin", "SIDE_EFFECTS": str(tmp_path / "effects.txt")}
    w = await WorkerProcess.spawn(sys.executable, tmp_path, env)
    init = {"data": {}, "event_type": "post", "event_id": "evt_1", "replay": state.for_worker()}
    await w.send(
        {
            "type": "start",
            "code_dir": str(tmp_path),
            "entrypoint": "h.py:run",
            "session_id": "ses_fixture",
            "is_durable": True,
        },
        pickle.dumps(init),
    )
    frames = []
    async for header, blob in w.frames():
        frames.append((header, blob))
        if header["type"] in ("activity", "sleep"):  # nothing should be live before the end
            await w.send({"type": "ack", "deadline_us": 0})
        if header["type"] == "done":
            break
    await w.close()
    return frames


async def test_worker_replays_without_running_recorded_steps(tmp_path: Path) -> None:
    frames = await _replay(tmp_path, HANDLER)
    assert [h for h, _ in frames[:-1]] == [
        {"type": "print", "text": "again 424242\n", "n": 4},
    ]
    done, blob = frames[-1]
    assert done == {"type": "done", "ok": True, "reusable": True}
    assert pickle.loads(blob) == 424242
    assert not (tmp_path / "effects.txt").exists()  # the recorded activity did not run again


async def test_changed_code_is_non_determinism(tmp_path: Path) -> None:
    changed = HANDLER.replace("random.randint(1, 1_000_000)", "random.choice([1, 2])")
    frames = await _replay(tmp_path, changed)
    done = frames[-1][0]
    assert done["ok"] is False
    assert done["error"].startswith(
        'non-determinism at h.py:9: step 1 of the journal is activity "randint", '
        'but the code now asks for activity "choice"'
    )
