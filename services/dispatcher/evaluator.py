"""The filter evaluator: a dispatcher's child process that judges CEL filters on a budget.

``python -m ak_dispatcher.evaluator`` reads requests on its standard input and answers on
its standard output (anything else it prints goes to standard error). A frame is a 4-byte
big-endian length and a msgpack body: a ``FilterRequest`` in, one ``cel.Verdict`` out per
filter, in order, each as soon as it is known. The first frame out is empty: ready. It
ends when its input closes.

The budget is CPU time, kept by a ``setitimer(ITIMER_PROF)`` timer: cel-python is pure
Python, so its signal stops a filter between two bytecodes (regular expressions check for
signals too). One bytecode can take gigabytes, though (a ``replace`` in C): the functions
that build strings and lists refuse to build one over ``cellimits.MAX_BUILT``, and the
process is held to ``AK_DISPATCHER__EVALUATOR_MEMORY_MB`` of address space, so a filter
that takes more gets a ``MemoryError``, counts as failed, and the evaluator goes on. The
dispatcher kills an evaluator that does not answer at all (``evaluators.py``).
"""

from __future__ import annotations

import os
import resource
import signal
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, BinaryIO

from akcore import cel, config, wire

HEADER = struct.Struct(">I")


@dataclass
class FilterRequest:
    """The filters to judge one event by, and the budget of each."""

    event: bytes  # the event as it came off AK_EVENTS (an encoded wire.Event), not re-encoded
    filters: list[str]
    budget_ms: int


def frame(msg: Any) -> bytes:
    body = wire.encode(msg)
    return HEADER.pack(len(body)) + body


class OverBudget(BaseException):
    """Raised by the budget's timer inside a filter. Not an ``Exception``: cel-python turns
    those into CEL error values and carries on."""


# CPU seconds between two more signals once a filter is over its budget: some C code called
# by the interpreter swallows whatever a signal handler raised within it (a dict lookup
# whose key compares in Python, say), so one signal is not always enough.
AGAIN = 0.01


class _Timer:
    armed = False  # set by the one filter being judged; the handler raises only while set


def _over_budget(signum: int, frame: FrameType | None) -> None:
    if _Timer.armed:
        raise OverBudget


def _disarm() -> None:
    _Timer.armed = False  # from here on a signal still on its way does nothing
    signal.setitimer(signal.ITIMER_PROF, 0)


def over_budget_note(budget_ms: int) -> str:
    return f"filter ran over its {budget_ms} ms budget"


class _Memory:
    limit_mb = 0  # the address space this process holds itself to (``limit_memory``)


def limit_memory(mb: int) -> None:
    """Holds this process to ``mb`` MiB of address space (0: no limit), for good."""
    if mb <= 0:
        return
    value, hard = mb << 20, resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(resource.RLIMIT_AS, (value, value))
    _Memory.limit_mb = value >> 20


def over_memory_note() -> str:
    if not _Memory.limit_mb:
        return "filter ran out of memory"
    return (
        f"filter ran over the evaluator's memory limit of {_Memory.limit_mb} MiB "
        f"({config.ENV_EVALUATOR_MEMORY_MB})"
    )


def judge_within(expr: str, variables: dict[str, Any], budget_ms: int) -> cel.Verdict:
    """``cel.judge`` stopped after ``budget_ms`` of CPU time (main thread only), or when
    the process runs out of memory."""
    previous = signal.signal(signal.SIGPROF, _over_budget)
    verdict = None
    ran_out = False
    try:
        try:
            _Timer.armed = True
            signal.setitimer(signal.ITIMER_PROF, budget_ms / 1000, AGAIN)
            verdict = cel.judge(expr, variables)
        except MemoryError:
            ran_out = True  # (its note is made below, once what the filter built is freed)
        _disarm()
    except OverBudget:  # the filter's, or one that came just as it ended
        pass
    while True:  # a signal may interrupt disarming too, until the flag is down
        try:
            _disarm()
            break
        except OverBudget:
            continue
    signal.signal(signal.SIGPROF, previous)
    if ran_out:
        return cel.Verdict(False, over_memory_note())
    return verdict if verdict is not None else cel.Verdict(False, over_budget_note(budget_ms))


def judge_event(req: FilterRequest) -> Iterator[cel.Verdict]:
    """Each filter's verdict on the event, which is decoded and converted once for all."""
    try:
        event = wire.decode(wire.Event, req.event)
    except Exception as e:
        problem = f"the event could not be read: {e}"
        if isinstance(e, MemoryError):
            problem = over_memory_note()
        for _ in req.filters:
            yield cel.Verdict(False, problem)
        return
    variables = cel.variables(event.event_type, event.data)
    for expr in req.filters:
        yield judge_within(expr, variables, req.budget_ms)


def _read(src: BinaryIO, n: int) -> bytes | None:
    data = src.read(n)
    if len(data) < n:
        return None  # the dispatcher closed our input: time to go
    return data


def serve(src: BinaryIO, out: BinaryIO) -> None:
    while (head := _read(src, HEADER.size)) is not None:
        body = _read(src, HEADER.unpack(head)[0])
        if body is None:
            return
        for verdict in judge_event(wire.decode(FilterRequest, body)):
            out.write(frame(verdict))
            out.flush()


def main() -> None:
    # Ctrl-C reaches the whole process group: the dispatcher ends us by closing our input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The frames own standard output; a stray print from a library goes to standard error.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    # (After the imports: a limit set too low fails filters, with a note that says so.)
    limit_memory(config.evaluator_memory_mb())
    out.write(HEADER.pack(0))  # ready: the dispatcher counts filters' time from here
    out.flush()
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
