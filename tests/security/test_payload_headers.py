"""One project's handler against its runner's NATS connection (a review of 2026-12-07's
"sessions over the NATS limit refused"): NATS counts a message's headers with its data
against its limit, nats-py checks the data alone, and a server that gets a message over
the limit closes the connection, which nats-py then takes as closed for good. A handler
that sent signals of decreasing size (each over the limit refused, and caught) came to
one whose data was within the limit and whose headers took it over: the runner's
connection closed and stayed so, and no session of any project ran on that runner again
(its process up, with no NATS). Now such a message is refused as over the limit, unsent;
the handler goes on to one that fits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Stack, start_stack, write_project

CODE = """\
import time

import autokitteh


def waiter(event):
    time.sleep(240)


def sweep(event):
    # Signals of decreasing size to a session of its own project: each over NATS's limit is
    # refused (and caught); the first that is not is the largest that fits, by its data.
    target = autokitteh.start("h.py:waiter", {})

    def sent(n):
        try:
            autokitteh.signal(target, "s", "a" * n)
            return True
        except Exception:
            return False

    over = 9 * 1024 * 1024
    for step in (65536, 4096, 256, 16, 2):
        n = over - step
        while not sent(n):
            over, n = n, n - step
        print("sent", step, n, flush=True)
    print("done", over)


def hello(event):
    print("hello")
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("payload")
    s = start_stack(home, {"AK_RUNNER__SESSION_TIMEOUT": "300"})
    manifest = "version: v1\nproject:\n  name: big\n"
    s.deploy(write_project(home / "p", {"autokitteh.yaml": manifest, "h.py": CODE}))
    yield s
    s.stop()


def _start(stack: Stack, function: str, **inputs: object) -> str:
    flags = [x for k, v in inputs.items() for x in ("-I", f"{k}={json.dumps(v)}")]
    res = stack.ak("session", "start", "-o", "big", "-p", f"h.py:{function}", *flags)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().removeprefix("session_id: ")


def test_a_handler_cannot_close_its_runners_nats_connection(stack: Stack, tmp_path: Path) -> None:
    sid = _start(stack, "sweep")
    session = stack.wait_session(sid, timeout=240)
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    assert session["state"] == "COMPLETED", (session, prints)
    assert prints[-1].startswith("done"), prints
    assert "maximum payload exceeded" not in stack.output()
    # The runner still runs sessions.
    hello = _start(stack, "hello")
    assert stack.wait_session(hello, timeout=60)["state"] == "COMPLETED"
