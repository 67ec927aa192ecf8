"""The worker process seen from the runner's side of the pipes (no NATS involved)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

from ak_runner.worker import WorkerProcess

HANDLERS = """\
import sys
print("loading", 1, sep="=")


def printer(event, session_id):
    print("a", "b", sep=", ", end="")
    print("two trailing\\n")
    print("err", file=sys.stderr)
    with open("own.txt", "w") as f:
        print("not captured", file=f)
    print(session_id, event.event_type, event.data.body.json["n"])
    return {"answer": 42}


async def coro(event):
    return "async"


def fails(event):
    raise KeyError("k")
"""


async def _run(
    tmp_path: Path, entry: str, data: dict[str, Any] | None = None
) -> list[tuple[dict[str, Any], bytes]]:
    (tmp_path / "h.py").write_text(HANDLERS)
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    event = {"data": data or {}, "event_type": "post", "event_id": "evt_1"}
    await w.send(
        {
            "type": "start",
            "code_dir": str(tmp_path),
            "entrypoint": entry,
            "session_id": "ses_1",
            "is_durable": True,
        },
        pickle.dumps(event),
    )
    frames = [f async for f in w.frames()]
    assert await w.close() == 0
    return frames


async def test_prints_are_captured_exactly(tmp_path: Path) -> None:
    body = {"bytes": b'{"n": 3}', "text": '{"n": 3}', "json": {"n": 3}, "form": None}
    frames = await _run(tmp_path, "h.py:printer", {"body": body})
    texts = [h["text"] for h, _ in frames if h["type"] == "print"]
    assert texts == ["loading=1\n", "a, b", "two trailing\n\n", "err\n", "ses_1 post 3\n"]
    done, blob = frames[-1]
    assert done == {"type": "done", "ok": True}
    assert pickle.loads(blob) == {"answer": 42}
    assert (tmp_path / "own.txt").read_text() == "not captured\n"


async def test_async_handler(tmp_path: Path) -> None:
    done, blob = (await _run(tmp_path, "h.py:coro"))[-1]
    assert done["ok"] and pickle.loads(blob) == "async"


async def test_error_is_trimmed_to_user_frames(tmp_path: Path) -> None:
    done, _ = (await _run(tmp_path, "h.py:fails"))[-1]
    assert done["ok"] is False
    assert done["error"] == "error: KeyError('k')"
    assert done["traceback"].startswith("Traceback (most recent call last):\n  File ")
    assert "h.py" in done["traceback"] and "_worker.py" not in done["traceback"]


async def test_missing_function(tmp_path: Path) -> None:
    frames = await _run(tmp_path, "h.py:nope")
    assert frames[-1][0]["error"] == "error: LookupError(\"function 'nope' not found in h.py\")"
