"""The frames a worker sends its runner, one type each, parsed and checked where they enter
the runner (``parse``): a malformed frame is a ``FrameError`` that ends its session alone.

Worker to runner (each frame's JSON header has a ``type``; a blob may follow):
  print     one print() (blob: its text, UTF-8); ``n`` numbers the handler's own prints,
            ``activity`` marks a print made inside an activity. No reply.
  step      before every durable step of handler code: ``step`` (1, 2, ...), ``kind``
            (activity, sleep or a system call), ``function``, ``where`` (file:line); a sleep
            has ``seconds``, a system call ``args`` (and a blob: a signal's payload, a value).
            Reply ``step``: recorded (``replayed``) or live (an activity's go-ahead, a
            sleep's deadline, a system call's outcome). A step the worker replays from
            the answers its start frame held is sent ``ahead`` and not answered: the
            runner checks it against the journal all the same, in order. A live activity
            the runner gave a go-ahead for in advance is sent ``granted`` and not answered.
  activity  a live activity finished: its outcome (blob: the pickled value or exception).
            Reply ``ack`` once it is journaled.
A reply to a live activity's outcome or system call may carry ``go_until``: the worker may
start the next step, if it is a live activity, without asking, before that
``time.monotonic()`` deadline (a go-ahead in advance, never past the runner's lease). The
start frame's ``clock`` is the runner's ``time.monotonic()``: a worker whose clock is not
the same uses none.
  syscall   a system call that is not a durable step (inside an activity, or a session
            that is not durable). Reply ``syscall``.
  done      the handler returned (blob: its value, ``autokitteh._values``) or raised.
Runner to worker: ``start`` (one session; the blob is a pickle of its inputs), and the
replies above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._typed import TypeMismatch, typed

# Characters of one print kept; a longer print is cut and says so.
MAX_PRINT = 256 * 1024
# Characters kept of a session's or an activity's error, and of a traceback; the middle of a
# longer one is cut and says so. Both fit in a frame's header (MAX_HEADER) even with every
# character escaped in JSON (up to 12 bytes one).
MAX_ERROR = 32 * 1024
MAX_ERROR_TYPE = 1024  # characters kept of an error's type name


class FrameError(ValueError):
    """A frame from the worker that does not fit the protocol."""


@dataclass(frozen=True)
class PrintFrame:
    # the text is the blob (UTF-8): not parsed as JSON
    n: int = 0
    activity: bool = False
    cut: int = 0  # the length of the text printed, when longer than MAX_PRINT


@dataclass(frozen=True)
class StepFrame:
    step: int
    kind: str
    function: str
    where: str = ""
    seconds: float = 0.0
    args: dict[str, Any] = field(default_factory=dict)
    ahead: bool = False  # replayed from what the start frame held: not to be answered
    granted: bool = False  # a live activity started on a go-ahead given in advance


@dataclass(frozen=True)
class ActivityFrame:
    step: int
    function: str
    ok: bool
    digest: str = ""
    t0_ns: int = 0
    t1_ns: int = 0
    error: str = ""
    error_type: str = ""


@dataclass(frozen=True)
class SyscallFrame:
    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DoneFrame:
    ok: bool
    reusable: bool = False
    error: str = ""
    traceback: str = ""
    error_type: str = ""


Frame = PrintFrame | StepFrame | ActivityFrame | SyscallFrame | DoneFrame

FRAMES: dict[str, type[Any]] = {
    "print": PrintFrame,
    "step": StepFrame,
    "activity": ActivityFrame,
    "syscall": SyscallFrame,
    "done": DoneFrame,
}


def parse(header: dict[str, Any]) -> Frame:
    """The typed frame of a header; raises FrameError."""
    kind = header.get("type")
    cls = FRAMES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise FrameError(f"unknown frame type {kind!r}")
    try:
        frame: Frame = typed(cls, header, f"{kind} frame")
    except TypeMismatch as e:
        raise FrameError(str(e)) from None
    if isinstance(frame, (StepFrame, ActivityFrame)) and frame.step < 1:
        raise FrameError(f"{kind} frame: step {frame.step} is not a step number")
    return frame


def cut_print(text: str) -> tuple[str, int]:
    """A print's text within MAX_PRINT characters (and a line that says it was cut), and the
    original length if it was cut. A text cut already is left as it is."""
    if len(text) <= MAX_PRINT + _MARKER_ROOM:
        return text, 0
    marker = f"\n[... cut: {len(text):,} characters printed, the first {MAX_PRINT:,} kept]"
    return text[:MAX_PRINT] + marker, len(text)


def cut_middle(text: str, limit: int = MAX_ERROR) -> str:
    """``text`` within about ``limit`` characters: its start and its end, and a line between
    them that says how much was cut. A text cut already is left as it is."""
    if len(text) <= limit + _MARKER_ROOM:
        return text
    half = limit // 2
    marker = f"\n[... cut: {len(text) - 2 * half:,} of {len(text):,} characters ...]\n"
    return text[:half] + marker + text[-half:]


_MARKER_ROOM = 100  # the marker's length, at most
