"""Projects kept apart: what crosses from one session to another is data, never pickle, and
a session reaches only its own project's sessions, projects, sources and events.

Two projects on one real stack: ``secp`` (the victim) and ``evil``. The attacker's handler
talks to its worker's runtime directly (``_runtime.syscall``), as any handler could, so the
SDK's own checks are not what protects the victim."""

from __future__ import annotations

import json
import pickle
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ak_runner.worker import WorkerProcess
from akcore import ids

from tests.helpers import Stack, start_stack, write_project

SECP_MANIFEST = """\
version: v1
project:
  name: secp
  triggers:
    - name: sync_hook
      call: v.py:sync_wait
      webhook: {}
      is_sync: true
    - name: sync_source
      webhook: {}
      is_sync: true
"""

SECP = """\
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import autokitteh

MARKERS = Path(os.environ["MARKER_DIR"])
VALUE = {
    "bytes": b"\\x00\\xff",
    "naive": datetime(2026, 1, 2, 3, 4, 5, 6),
    "aware": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    "delta": timedelta(days=1, microseconds=3),
    "set": {1, 2},
    "tuple": (1, (2, "3")),
    7: "an int key",
}


def victim(event):
    (MARKERS / "victim").write_text(event.session_id)
    got = autokitteh.next_signal("gift", timeout=60)
    print("victim got", got.payload if got else None)


def sender(event):
    autokitteh.signal(event.data.target, event.data.name, "from a friend")


def sync_wait(event):
    (MARKERS / "sync").write_text(f"{event.event_id} {event.session_id}")
    autokitteh.next_signal("answer", timeout=60)
    autokitteh.http_outcome(200, body="from secp")


def sync_listener(event):
    sub = autokitteh.subscribe("sync_source")
    (MARKERS / "listening").write_text(event.session_id)
    ev = autokitteh.next_event(sub, timeout=60, full=True)
    autokitteh.http_outcome(201, body="answered by a subscriber", event_id=ev.event_id)


def roundtrip(event):
    child = autokitteh.start("v.py:echo", {"value": VALUE, "parent": event.session_id})
    got = autokitteh.next_signal("echo", timeout=30)
    print("signal", got.payload == VALUE, sorted(type(v).__name__ for v in got.payload.values()))
    end = autokitteh.next_signal(child, timeout=30)
    print("child result", end.payload["value"] == VALUE)
    autokitteh.set_value("v", VALUE)
    print("stored", autokitteh.get_value("v") == VALUE)
    print("cas", autokitteh.check_and_set_value("v", VALUE, new_value=(1, b"2")))
    print("now", autokitteh.get_value("v"))
    try:
        autokitteh.signal(event.session_id, "x", {"ok": [1, object()]})
    except autokitteh.AutoKittehError as e:
        print("refused:", e)


def echo(event):
    value = event.data["value"]
    print("child got", value == VALUE)
    autokitteh.signal(event.data["parent"], "echo", value)
    return value
"""

EVIL = '''\
import os
import pickle
from pathlib import Path

import autokitteh
from autokitteh import _runtime

MARKER = Path(os.environ["MARKER_DIR"]) / "pwned"


class Boom:
    """Unpickling it runs code: it writes the marker file."""

    def __reduce__(self):
        return (Path.write_text, (MARKER, "code ran in the victim"))


def raw_signal(target, blob):
    """A signal as the worker's pipe carries it, past the SDK's own encoding."""
    try:
        _runtime._runtime.syscall("signal", {"session_id": target, "name": "gift"}, blob)
        return "sent"
    except autokitteh.AutoKittehError as e:
        return f"refused: {e}"


def attack(event):
    print("pickle:", raw_signal(event.data.target, pickle.dumps(Boom())))
    print("value:", raw_signal(event.data.target, b'"hello"'))
    print("nobody:", raw_signal(event.data.nobody, b'"hello"'))
    for project in ("secp", "no-such-project"):
        try:
            autokitteh.start("v.py:roundtrip", {}, project=project)
        except autokitteh.AutoKittehError as e:
            print("start:", e)
    try:
        autokitteh.subscribe(event.data.trigger_id)
    except autokitteh.AutoKittehError as e:
        print("subscribe:", e)
    try:
        autokitteh.http_outcome(299, body="from evil", event_id=event.data.event_id)
    except autokitteh.AutoKittehError as e:
        print("outcome:", e)


def own_pickle(event):
    print("pickle:", raw_signal(event.session_id, pickle.dumps(Boom())))
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    home = tmp_path_factory.mktemp("isolation")
    markers = home / "markers"
    markers.mkdir()
    stack = start_stack(home, {"MARKER_DIR": str(markers)})
    try:
        for name, files in (
            ("secp", {"autokitteh.yaml": SECP_MANIFEST, "v.py": SECP}),
            ("evil", {"autokitteh.yaml": "version: v1\nproject:\n  name: evil\n", "e.py": EVIL}),
        ):
            stack.deploy(write_project(home / name, files))
        yield stack, markers
    finally:
        stack.stop()


def _start(stack: Stack, project: str, entry: str, **inputs: Any) -> str:
    args = [f"{k}={json.dumps(v)}" for k, v in inputs.items()]
    res = stack.ak(
        "session", "start", "-o", project, "-p", entry, *(x for a in args for x in ("-I", a))
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().removeprefix("session_id: ")


def _prints(stack: Stack, sid: str) -> tuple[str, list[str]]:
    state = stack.wait_session(sid, timeout=60)["state"]
    return state, stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()


def _wait_file(path: Path) -> str:
    deadline = time.monotonic() + 30
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, path
        time.sleep(0.05)
    return path.read_text()


def _post(url: str, box: dict[str, Any]) -> None:
    req = urllib.request.Request(url, data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        box["reply"] = (resp.status, resp.read())


def test_another_projects_session_source_project_and_event_are_out_of_reach(
    env: tuple[Stack, Path],
) -> None:
    stack, markers = env
    victim = _start(stack, "secp", "v.py:victim")
    _wait_file(markers / "victim")
    hook = json.loads(stack.ak("trigger", "get", "sync_hook", "-p", "secp", "-j").stdout)
    box: dict[str, Any] = {}
    sync = threading.Thread(
        target=_post, args=(f"{stack.url}/webhooks/{hook['webhook_slug']}", box)
    )
    sync.start()
    event_id, sync_session = _wait_file(markers / "sync").split()
    nobody = ids.new_id("ses")

    attacker = _start(
        stack,
        "evil",
        "e.py:attack",
        target=victim,
        nobody=nobody,
        trigger_id=hook["trigger_id"],
        event_id=event_id,
    )
    state, prints = _prints(stack, attacker)
    assert state == "COMPLETED", prints
    assert prints[0].startswith("pickle: refused: signal: signal payload: not an encoded value")
    # another project's session is refused exactly as one that does not exist
    assert prints[1:3] == [
        f'value: refused: signal: session "{victim}" not found',
        f'nobody: refused: signal: session "{nobody}" not found',
    ]
    assert prints[3:] == [
        'start: start: project "secp" not found',
        'start: start: project "no-such-project" not found',
        f"subscribe: subscribe: subscribe({hook['trigger_id']}, ) -> source "
        f'"{hook["trigger_id"]}" not found',
        f'outcome: outcome: event "{event_id}" not found',
    ]
    assert stack.ak("session", "list", "-p", "secp", "-j").stdout.count('"v.py:roundtrip"') == 0

    # The victim got only what its own project sent; no code of the attacker ran.
    _start(stack, "secp", "v.py:sender", target=victim, name="gift")
    assert _prints(stack, victim) == ("COMPLETED", ["victim got from a friend"])
    _start(stack, "secp", "v.py:sender", target=sync_session, name="answer")
    sync.join(60)
    assert box["reply"] == (200, b"from secp")
    assert not (markers / "pwned").exists()


def test_a_session_answers_its_own_projects_event_that_reached_its_subscription(
    env: tuple[Stack, Path],
) -> None:
    stack, markers = env
    listener = _start(stack, "secp", "v.py:sync_listener")
    _wait_file(markers / "listening")
    hook = json.loads(stack.ak("trigger", "get", "sync_source", "-p", "secp", "-j").stdout)
    box: dict[str, Any] = {}
    _post(f"{stack.url}/webhooks/{hook['webhook_slug']}", box)
    assert box["reply"] == (201, b"answered by a subscriber")
    assert stack.wait_session(listener)["state"] == "COMPLETED"


def test_a_pickle_is_refused_within_the_project_too(env: tuple[Stack, Path]) -> None:
    stack, markers = env
    state, prints = _prints(stack, _start(stack, "evil", "e.py:own_pickle"))
    assert state == "COMPLETED"
    assert prints[0].startswith("pickle: refused: signal: signal payload: not an encoded value")
    assert not (markers / "pwned").exists()


def test_values_cross_sessions_exactly_and_other_objects_fail_in_the_sender(
    env: tuple[Stack, Path],
) -> None:
    stack, _ = env
    sid = _start(stack, "secp", "v.py:roundtrip")
    state, prints = _prints(stack, sid)
    assert (state, prints) == (
        "COMPLETED",
        [
            "signal True ['bytes', 'datetime', 'datetime', 'set', 'str', 'timedelta', 'tuple']",
            "child result True",
            "stored True",
            "cas True",
            "now (1, b'2')",
            "refused: signal payload['ok'][1]: object is not a value; use JSON types, bytes, "
            "datetime, timedelta, set, tuple",
        ],
    )
    child = json.loads(stack.ak("session", "list", "-p", "secp", "-j").stdout.splitlines()[0])
    assert child["entrypoint"] == "v.py:echo" and child["parent_session_id"] == sid
    assert _prints(stack, child["session_id"]) == ("COMPLETED", ["child got True"])


async def test_a_worker_decodes_a_signal_as_data_even_past_the_runner(tmp_path: Path) -> None:
    """Were a pickle to reach a worker (the runner bypassed), it is refused as data: the
    handler gets an AutoKittehError and no code runs."""
    marker = tmp_path / "pwned"
    (tmp_path / "h.py").write_text(
        "import autokitteh\n"
        "def run(event):\n"
        "    try:\n"
        "        autokitteh.next_signal('gift')\n"
        "    except autokitteh.AutoKittehError as e:\n"
        "        print(str(e)[:36])\n"
    )
    w = await WorkerProcess.spawn(sys.executable, tmp_path, {"PATH": "/usr/bin:/bin"})
    start = {
        "type": "start",
        "code_dir": str(tmp_path),
        "entrypoint": "h.py:run",
        "session_id": "ses_1",
        "is_durable": False,
    }
    await w.send(start, pickle.dumps({"data": {}, "event_type": "", "event_id": "evt_1"}))
    crafted = pickle.dumps(_Boom(marker))
    frames = []
    async for header, blob in w.frames():
        frames.append((header, blob))
        if header["type"] == "syscall":
            reply = pickle.dumps({"name": "gift", "payload": crafted})  # as the runner sends
            await w.send({"type": "syscall"}, reply)
        if header["type"] == "done":
            break
    await w.close()
    prints = [b.decode() for h, b in frames if h["type"] == "print"]
    assert prints == ["signal payload: not an encoded value\n"]
    assert frames[-1][0]["ok"] is True
    assert not marker.exists()


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.marker, "code ran"))
