"""Replay from a committed journal, with no NATS: bookkeeping, then a real worker process."""

from __future__ import annotations

import base64
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
from ak_runner.session import replayed_reply
from ak_runner.worker import WorkerProcess
from akcore import journal, wire

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


def test_history_of_a_journal() -> None:
    history = journal.fold(load("crash_in_sleep.json"))
    assert sorted(history.steps) == [1, 2, 3]
    assert isinstance(history.steps[1], journal.Activity)
    assert isinstance(history.steps[3], journal.Sleep)
    assert history.prints == 3  # workflow prints; the activity's own print does not count
    assert history.next_seq == 9 and history.ended is None and history.attempts == 1


def test_replay_rules() -> None:
    history = journal.fold(load("crash_in_sleep.json"))
    rec = history.replay(1, "activity", "randint", "h.py:9")
    assert isinstance(rec, journal.Activity) and pickle.loads(rec.result) == 424242
    assert history.replay(4, "activity", "anything", "h.py:20") is None  # past the end: live
    with pytest.raises(
        journal.NonDeterminism,
        match=r'at h.py:9: step 1 of the journal is activity "randint", '
        r'but the code now asks for activity "choice"',
    ):
        history.replay(1, "activity", "choice", "h.py:9")
    with pytest.raises(journal.NonDeterminism, match='step 3 of the journal is sleep "sleep"'):
        history.replay(3, "activity", "randint", "h.py:15")
    assert history.is_replayed_print(3) and not history.is_replayed_print(4)


async def _replay(tmp_path: Path, handler: str) -> list[tuple[dict[str, Any], bytes]]:
    """Runs ``handler`` in a real worker against the fixture's history, answering its steps
    as the runner does (``ak_runner.session``): recorded steps from the journal."""
    (tmp_path / "h.py").write_text(handler)
    (tmp_path / "helper.py").write_text(HELPER)
    history = journal.fold(load("crash_in_sleep.json"))
    env = {"PATH": "/usr/bin:/bin", "SIDE_EFFECTS": str(tmp_path / "effects.txt")}
    w = await WorkerProcess.spawn(sys.executable, tmp_path, env)
    init = {"data": {}, "event_type": "post", "event_id": "evt_1"}
    start = {
        "type": "start",
        "code_dir": str(tmp_path),
        "entrypoint": "h.py:run",
        "session_id": "ses_fixture",
        "is_durable": True,
        "prints": history.prints,
    }
    await w.send(start, pickle.dumps(init))
    frames = []
    async for header, blob in w.frames():
        frames.append((header, blob))
        if header["type"] == "step":
            try:
                rec = history.replay(
                    header["step"], header["kind"], header["function"], header["where"]
                )
            except journal.NonDeterminism as e:
                frames.append(({"type": "non-determinism", "error": str(e)}, b""))
                break
            assert rec is not None, f"step {header['step']} is live: nothing should be"
            await w.send(*replayed_reply(rec))
        if header["type"] == "done":
            break
    w.kill()
    await w.close()
    return frames


async def test_worker_replays_without_running_recorded_steps(tmp_path: Path) -> None:
    frames = await _replay(tmp_path, HANDLER)
    assert [h["type"] for h, _ in frames] == ["step", "step", "step", "print", "done"]
    assert frames[3][0] == {"type": "print", "text": "again 424242\n", "n": 4}
    done, blob = frames[-1]
    assert done == {"type": "done", "ok": True, "reusable": True}
    assert pickle.loads(blob) == 424242
    assert not (tmp_path / "effects.txt").exists()  # the recorded activity did not run again


async def test_changed_code_is_non_determinism(tmp_path: Path) -> None:
    changed = HANDLER.replace("random.randint(1, 1_000_000)", "random.choice([1, 2])")
    frames = await _replay(tmp_path, changed)
    assert frames[-1][0]["error"].startswith(
        'non-determinism at h.py:9: step 1 of the journal is activity "randint", '
        'but the code now asks for activity "choice"'
    )
