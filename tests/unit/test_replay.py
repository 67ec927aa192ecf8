"""Replay from journals recorded in real runs (tests/fixtures/journals, made by its
record.py), with no NATS: the record kinds, the fold, the replay rules, and the recorded
handlers run again in a real worker answered from their journals as the runner answers."""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from ak_runner.session import REPLAY_AHEAD_BYTES, replay_ahead, replayed_reply
from ak_runner.worker import WorkerProcess
from akcore import journal, timefmt, wire
from autokitteh._values import loads

FIXTURES = Path(__file__).parents[1] / "fixtures" / "journals"


def load(name: str) -> list[wire.JournalRecord]:
    records = []
    for raw in json.loads((FIXTURES / name).read_text()):
        data = {}
        for k, v in raw["data"].items():
            if k.endswith("_b64"):
                data[k.removesuffix("_b64")] = base64.b64decode(v)
            else:
                data[k] = v
        records.append(wire.JournalRecord(**{**raw, "data": data}))
    return records


RECORDED = ["everything.json", "child.json"]


def test_the_fixtures_hold_every_kind_of_record_and_each_parses() -> None:
    kinds = set()
    for name in [*RECORDED, "parked.json"]:
        for rec in load(name):
            journal.payload(rec)  # its data fits its kind
            kinds.add(journal.kind_of(rec))
    assert kinds == set(journal.Kind)


def test_a_record_that_does_not_fit_its_kind_is_malformed() -> None:
    rec = wire.JournalRecord("ses_x", 3, "activity", 1, {"step": "one", "function": "f"})
    with pytest.raises(journal.MalformedRecord, match="activity record 3: step is str, not int"):
        journal.payload(rec)
    with pytest.raises(journal.MalformedRecord, match="unknown journal record kind 'nope'"):
        journal.payload(wire.JournalRecord("ses_x", 4, "nope", 1, {}))
    with pytest.raises(journal.MalformedRecord, match="sleep record 5: deadline_us is missing"):
        journal.payload(wire.JournalRecord("ses_x", 5, "sleep", 1, {"step": 1, "seconds": 1}))


def test_history_of_a_recorded_journal() -> None:
    history = journal.fold(load("everything.json"))
    assert sorted(history.steps) == list(range(1, 19))
    assert isinstance(history.steps[1], journal.Activity) and history.steps[1].function == "randint"
    assert isinstance(history.steps[4], journal.Sleep)
    assert [history.steps[k].function for k in (5, 6, 7, 8, 9)] == [
        "subscribe",
        "next_event",
        "unsubscribe",
        "start",
        "next_signal",
    ]
    assert history.prints == 11  # the handler's own prints; the activity's is not counted
    assert history.consumed == {1, 2, 3} and history.subscribed
    assert history.attempts == 2 and history.last_retry is not None
    assert history.last_retry.error.startswith("Unavailable: fault injected")
    assert history.ended is not None and history.ended.state == wire.COMPLETED
    assert history.next_seq == 35


def test_history_of_a_parked_journal() -> None:
    """A session whose sleep parked it, resumed by a second attempt: attempts count from the
    journal, and those since the parking are what MAX_ATTEMPTS applies to."""
    records = load("parked.json")
    upto = [r for r in records if r.seq <= 6]
    parked = journal.fold(upto)
    assert parked.parked_at == 6 and parked.last_parked is not None
    assert parked.last_parked[1] == parked.parked[2]
    assert parked.parked[2].reason == "sleep" and parked.parked[2].deadline_us
    assert parked.attempts == 1 and parked.started_since_park == 0
    whole = journal.fold(records)
    assert whole.parked_at == 0 and whole.attempts == 2 and whole.started_since_park == 1
    assert whole.last_started is not None and whole.last_started.attempt == 2
    assert whole.ended is not None and whole.ended.state == wire.COMPLETED


def test_a_far_sleep_is_not_replayed_ahead_when_sessions_park() -> None:
    """With parking on, a recorded sleep that has long to go is asked for, so that the
    runner knows the worker sleeps in it (and may park it again); one that is over is not."""
    history = journal.fold([r for r in load("parked.json") if r.seq <= 6])
    assert set(replay_ahead(history)) == {1, 2}
    assert set(replay_ahead(history, park_after=1.0)) == {1, 2}  # its deadline has passed
    sleep = history.steps[2]
    assert isinstance(sleep, journal.Sleep)
    far = dataclasses.replace(sleep, deadline_us=timefmt.now_us() + 3_600_000_000)
    history.steps[2] = far
    assert set(replay_ahead(history)) == {1, 2}
    assert set(replay_ahead(history, park_after=1.0)) == {1}


def test_replay_rules() -> None:
    history = journal.fold(load("everything.json"))
    rec = history.replay(1, "activity", "randint", "h.py:23")
    assert isinstance(rec, journal.Activity) and isinstance(pickle.loads(rec.result), int)
    assert history.replay(19, "activity", "anything", "h.py:60") is None  # past the end: live
    with pytest.raises(
        journal.NonDeterminism,
        match=r'at h.py:23: step 1 of the journal is activity "randint", '
        r'but the code now asks for activity "choice"',
    ):
        history.replay(1, "activity", "choice", "h.py:23")
    with pytest.raises(journal.NonDeterminism, match='step 4 of the journal is sleep "sleep"'):
        history.replay(4, "activity", "randint", "h.py:30")
    with pytest.raises(journal.NonDeterminism, match="step 5 of the journal is subscribe"):
        history.replay(5, "next_event", "next_event", "h.py:31")
    assert history.is_replayed_print(11) and not history.is_replayed_print(12)


async def _replay(
    tmp_path: Path, fixture: str, code: str | None = None, ahead: int = REPLAY_AHEAD_BYTES
) -> list[tuple[dict[str, Any], bytes]]:
    """Runs the recorded handler in a real worker, answered from the journal as the runner
    answers (``ak_runner.session``): the start frame holds the answers to the recorded
    steps (up to ``ahead`` bytes of them), which the worker replays on its own, sending
    each step ahead; any other step is asked for and answered. Every step is checked
    against the journal; a live one fails the test."""
    shutil.copy(FIXTURES / "project" / "h.py", tmp_path / "h.py")
    if code is not None:
        (tmp_path / "h.py").write_text(code)
    records = load(fixture)
    history = journal.fold(records)
    assert history.created is not None
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    with mock.patch("ak_runner.session.REPLAY_AHEAD_BYTES", ahead):
        answers = replay_ahead(history)
    init = {"data": history.created.inputs, "event_type": "post", "event_id": "evt_1"}
    init["replay"] = answers
    start = {
        "type": "start",
        "code_dir": str(tmp_path),
        "entrypoint": history.created.entrypoint,
        "session_id": records[0].session_id,
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
            if not header.get("ahead"):
                await w.send(*replayed_reply(rec))
        elif header["type"] != "print":
            break
    w.kill()
    await w.close()
    return frames


@pytest.mark.parametrize("fixture", RECORDED)
async def test_a_recorded_session_replays_to_its_recorded_end(tmp_path: Path, fixture: str) -> None:
    """Every step comes back from the journal (activities, the sleep, events, signals, the
    child, values), no print is repeated, and the handler ends with what it returned."""
    frames = await _replay(tmp_path, fixture)
    history = journal.fold(load(fixture))
    steps = [h for h, _ in frames if h["type"] == "step"]
    assert [h["step"] for h in steps] == sorted(history.steps)
    assert all(h.get("ahead") for h in steps)  # replayed by the worker, checked by us
    assert [h for h, _ in frames if h["type"] == "print"] == []
    done, blob = frames[-1]
    assert done["type"] == "done" and done["ok"] is True, done
    assert history.ended is not None and history.ended.result is not None
    assert loads(blob) == loads(history.ended.result)  # the return value, as a value


async def test_changed_code_is_non_determinism(tmp_path: Path) -> None:
    code = (FIXTURES / "project" / "h.py").read_text()
    changed = code.replace("random.randint(1, 1_000_000)", "random.choice([1, 2])")
    line = changed.splitlines().index("    n = random.choice([1, 2])") + 1
    frames = await _replay(tmp_path, "everything.json", changed)
    assert frames[-1][0]["error"].startswith(
        f'non-determinism at h.py:{line}: step 1 of the journal is activity "randint", '
        'but the code now asks for activity "choice"'
    )


async def test_steps_past_what_the_start_frame_holds_are_asked_for(tmp_path: Path) -> None:
    """A long journal's answers do not all fit in the start frame: the worker replays those
    it has and asks for the rest, one at a time."""
    frames = await _replay(tmp_path, "everything.json", ahead=1000)
    steps = [h for h, _ in frames if h["type"] == "step"]
    assert [bool(h.get("ahead")) for h in steps[:2]] == [True, True]
    assert not any(h.get("ahead") for h in steps[-3:])
    assert [h["step"] for h in steps] == list(range(1, 19))
    assert frames[-1][0]["type"] == "done" and frames[-1][0]["ok"] is True


async def test_the_worker_does_not_replay_a_step_that_changed(tmp_path: Path) -> None:
    """The code asks for another step than the journal has: the worker does not use the
    answer it was sent for that step (a handler must never go on with another step's
    outcome); it asks, and the runner finds the non-determinism."""
    code = (FIXTURES / "project" / "h.py").read_text()
    changed = code.replace('print(shout("hi"))', 'print(shout("hi"), random.random())')
    frames = await _replay(tmp_path, "everything.json", changed)
    steps = [h for h, _ in frames if h["type"] == "step"]
    assert [(h["step"], bool(h.get("ahead"))) for h in steps] == [(1, True), (2, True), (3, False)]
    assert (
        'step 3 of the journal is activity "fails", but the code now asks for activity '
        '"random"' in frames[-1][0]["error"]
    )
