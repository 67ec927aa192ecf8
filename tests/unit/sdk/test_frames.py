"""Worker frames are typed and checked where they enter the runner."""

from __future__ import annotations

import io
import os

import pytest
from autokitteh._channel import read_frame
from autokitteh._frames import (
    MAX_ERROR,
    MAX_PRINT,
    ActivityFrame,
    FrameError,
    PrintFrame,
    StepFrame,
    cut_middle,
    cut_print,
    parse,
)
from autokitteh._worker import HOLD_BATCH, Channel


def test_frames_parse_into_their_types() -> None:
    assert parse({"type": "print", "n": 2}) == PrintFrame(n=2)
    step = parse({"type": "step", "step": 1, "kind": "sleep", "function": "sleep", "seconds": 2})
    assert step == StepFrame(1, "sleep", "sleep", seconds=2.0)
    act = parse({"type": "activity", "step": 3, "function": "f", "ok": True, "extra": 1})
    assert act == ActivityFrame(3, "f", True)  # unknown fields are ignored
    granted = parse(
        {"type": "step", "step": 4, "kind": "activity", "function": "f", "granted": True}
    )
    assert granted == StepFrame(4, "activity", "f", granted=True)


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ({"type": "activity"}, "activity frame: step is missing"),
        ({"type": "print", "n": "5"}, "print frame: n is str, not int"),
        ({"type": "step", "step": True, "kind": "a", "function": "f"}, "step is bool, not int"),
        ({"type": "step", "step": 0, "kind": "a", "function": "f"}, "step 0 is not a step"),
        ({"type": "syscall", "name": "x", "args": []}, "args is list, not dict"),
        ({"type": "reboot"}, "unknown frame type 'reboot'"),
        ({"type": ["print"]}, "unknown frame type"),
    ],
)
def test_malformed_frames_are_refused(header: dict[str, object], error: str) -> None:
    with pytest.raises(FrameError, match=error.replace("(", r"\(")):
        parse(header)


def test_a_long_print_is_cut_once() -> None:
    text = "x" * (MAX_PRINT + 1000)
    cut, original = cut_print(text)
    assert original == len(text) and cut.startswith("x" * MAX_PRINT)
    assert cut.endswith(
        f"[... cut: {len(text):,} characters printed, the first {MAX_PRINT:,} kept]"
    )
    assert cut_print(cut) == (cut, 0)  # the runner leaves what the worker cut as it is
    assert cut_print("short") == ("short", 0)


def test_a_long_error_is_cut_in_the_middle_once() -> None:
    text = "a" * MAX_ERROR + "b" * 10_000_000 + "c" * MAX_ERROR
    cut = cut_middle(text)
    n = len(text) - MAX_ERROR
    assert cut == "a" * (
        MAX_ERROR // 2
    ) + f"\n[... cut: {n:,} of {len(text):,} characters ...]\n" + "c" * (MAX_ERROR // 2)
    assert cut_middle(cut) == cut  # the runner leaves what the worker cut as it is
    assert cut_middle("short") == "short"


def _frames(data: bytes) -> list[dict[str, object]]:
    stream, out = io.BytesIO(data), []
    while (frame := read_frame(stream)) is not None:
        out.append(frame[0])
    return out


def test_held_frames_go_to_the_runner_in_batches_while_the_replay_goes_on() -> None:
    """Replayed steps are held and sent together, but not all at the end of the replay: a
    full batch goes at once (the runner checks it while the worker replays the next), and
    the rest goes with the next frame sent, in order."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    with os.fdopen(r, "rb", buffering=0) as fin, os.fdopen(w, "wb", buffering=0) as fout:
        ch = Channel(fin, fout)

        def pending() -> bytes:
            try:
                return fin.read(1 << 20) or b""
            except BlockingIOError:
                return b""

        for step in range(1, HOLD_BATCH):
            ch.hold({"type": "step", "step": step, "ahead": True})
        assert pending() == b""  # one short of a batch: held
        ch.hold({"type": "step", "step": HOLD_BATCH, "ahead": True})
        batch = _frames(pending())
        assert [f["step"] for f in batch] == list(range(1, HOLD_BATCH + 1))
        ch.hold({"type": "step", "step": HOLD_BATCH + 1, "ahead": True})
        assert pending() == b""
        ch.send({"type": "print", "n": 1}, b"hi")
        rest = _frames(pending())
        assert [(f["type"], f.get("step")) for f in rest] == [
            ("step", HOLD_BATCH + 1),
            ("print", None),
        ]
