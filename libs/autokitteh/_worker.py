"""The worker process: loads the user's code and runs one handler for the runner.

Started by the runner as ``python -m autokitteh._worker IN_FD OUT_FD`` with the deployment's
code directory as cwd. Frames on OUT_FD: ``print`` (text) and ``done`` (ok or error with a
traceback trimmed to the user's frames; pickled return value in the blob).
"""

from __future__ import annotations

import asyncio
import builtins
import importlib
import inspect
import io
import os
import pickle
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, BinaryIO

from ._channel import encode_frame, read_frame
from .body import with_body
from .event import Event

EXIT_PARENT_GONE = 70

_PACKAGE_HINT = """\
Hint: the handler imports a Python package that is not installed where it runs.
Install it into the worker's Python, then deploy again:
    {python} -m pip install <package>
(or point AK_WORKER_PYTHON at a Python that has it)."""


class Channel:
    """The worker's end of the pipes; sends are serialized so threads can print."""

    def __init__(self, fin: BinaryIO, fout: BinaryIO) -> None:
        self._in, self._out = fin, fout
        self._lock = threading.Lock()

    def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        data = encode_frame(header, blob)
        with self._lock:
            self._out.write(data)
            self._out.flush()

    def receive(self) -> tuple[dict[str, Any], bytes] | None:
        return read_frame(self._in)


def _capture_prints(ch: Channel) -> None:
    original = builtins.print

    def ak_print(
        *objects: Any,
        sep: str | None = " ",
        end: str | None = "\n",
        file: Any = None,
        flush: bool = False,
    ) -> None:
        original(*objects, sep=sep, end=end, file=file, flush=flush)
        if file is not None and file not in (sys.stdout, sys.stderr):
            return  # a print into the user's own file is not a session print
        buf = io.StringIO()
        original(*objects, sep=sep, end=end, file=buf)
        ch.send({"type": "print", "text": buf.getvalue()})

    builtins.print = ak_print


def _watch_parent(ch: Channel) -> None:
    """Exits when the runner goes away (its end of our input pipe closes)."""
    while ch.receive() is not None:
        pass
    os._exit(EXIT_PARENT_GONE)


def module_name(path: str) -> str:
    """``simple.py`` -> ``simple``; ``pkg/mod.py`` -> ``pkg.mod``."""
    p = Path(path)
    return ".".join((*p.parent.parts, p.stem)) if p.parent != Path(".") else p.stem


def format_error(exc: BaseException, code_dir: str) -> tuple[str, str]:
    """Returns (``error: <repr>``, traceback text trimmed to frames in the user's code)."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [i for i, f in enumerate(frames) if f.filename.startswith(code_dir + os.sep)]
    kept = frames[user[0] :] if user else frames[-1:]
    tb = "Traceback (most recent call last):\n" + "".join(traceback.format_list(kept))
    tb += "".join(traceback.format_exception_only(type(exc), exc))
    return f"error: {exc!r}", tb


def _load(entrypoint: str) -> Any:
    path, _, func = entrypoint.partition(":")
    module = importlib.import_module(module_name(path))
    fn = getattr(module, func, None)
    if fn is None or not callable(fn):
        raise LookupError(f"function {func!r} not found in {path}")
    return fn


def _call(fn: Any, event: Event, session_id: str) -> Any:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    result = fn(event, session_id=session_id) if "session_id" in params else fn(event)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


def run(ch: Channel, start: dict[str, Any], payload: bytes) -> None:
    code_dir = os.path.realpath(start["code_dir"])
    sys.path.insert(0, code_dir)
    ev = pickle.loads(payload)
    event = Event(
        data=with_body(ev["data"] or {}),
        event_type=ev.get("event_type"),
        event_id=ev.get("event_id"),
        session_id=start["session_id"],
    )
    try:
        fn = _load(start["entrypoint"])
    except BaseException as e:
        err, tb = format_error(e, code_dir)
        text = f"{err}\n\n{tb}"
        if isinstance(e, ModuleNotFoundError):
            text += "\n" + _PACKAGE_HINT.format(python=sys.executable)
        ch.send({"type": "print", "text": text})
        ch.send({"type": "done", "ok": False, "error": err, "traceback": tb})
        return
    try:
        result = _call(fn, event, start["session_id"])
    except BaseException as e:
        err, tb = format_error(e, code_dir)
        ch.send({"type": "done", "ok": False, "error": err, "traceback": tb})
        return
    try:
        blob = pickle.dumps(result)
    except Exception:
        blob = b""
    ch.send({"type": "done", "ok": True}, blob)


def main(argv: list[str]) -> None:
    fin = os.fdopen(int(argv[0]), "rb", buffering=0)
    fout = os.fdopen(int(argv[1]), "wb", buffering=0)
    ch = Channel(fin, fout)
    first = ch.receive()
    if first is None or first[0].get("type") != "start":
        sys.exit(EXIT_PARENT_GONE)
    threading.Thread(target=_watch_parent, args=(ch,), daemon=True).start()
    _capture_prints(ch)
    run(ch, first[0], first[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
