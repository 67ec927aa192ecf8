"""A project for fault tests (tests/e2e/test_fencing.py, test_parking.py): handlers whose
activity ``effect`` appends the worker's pid to a marker file per session and activity, so
a test counts how often each side effect ran; one webhook trigger per handler, on a stack
whose runners take faults from AK_TEST__FAULTS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Stack, start_stack, write_project

# What the handlers' file starts with (each test file adds its handlers after it).
EFFECT = """\
import os
import time

import autokitteh

DIR = os.environ["MARKER_DIR"]


@autokitteh.activity
def effect(sid, name):
    with open(os.path.join(DIR, f"{sid}.{name}"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    return os.getpid()
"""

Env = tuple[Stack, dict[str, str], Path]  # the stack, webhook paths by handler, marker dir


def manifest(project: str, handlers: list[str], extra: str = "") -> str:
    """A manifest with a webhook trigger calling ``f.py:<handler>`` for each handler."""
    triggers = "".join(
        f"    - name: {h}\n      call: f.py:{h}\n      webhook: {{}}\n" for h in handlers
    )
    return f"version: v1\nproject:\n  name: {project}\n  triggers:\n{triggers}{extra}"


def fault_env(
    tmp_path_factory: pytest.TempPathFactory,
    project: str,
    code: str,
    handlers: list[str],
    settings: dict[str, str],
    args: tuple[str, ...],
    extra_triggers: str = "",
) -> Iterator[Env]:
    """A module fixture's body: the stack (``settings`` on top of MARKER_DIR), the project
    deployed, stopped at the end."""
    home = tmp_path_factory.mktemp(project)
    markers = home / "markers"
    markers.mkdir()
    stack = start_stack(home, {"MARKER_DIR": str(markers), **settings}, args)
    files = {"autokitteh.yaml": manifest(project, handlers, extra_triggers), "f.py": code}
    try:
        yield stack, stack.deploy_paths(write_project(home / "proj", files)), markers
    finally:
        stack.stop()


def fire(stack: Stack, project: str, path: str, body: Any = None) -> str:
    """POSTs a webhook; the session it started."""
    status, headers, _ = stack.request("POST", path, json.dumps(body or {}).encode())
    assert status == 202
    return stack.session_of(project, headers["autokitteh-event-id"])


def journal_log(stack: Stack, sid: str) -> list[dict[str, Any]]:
    out = stack.ak("session", "log", sid, "-j", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def runs(markers: Path, sid: str, name: str) -> list[int]:
    """The worker pids that ran activity ``name`` of session ``sid``, once per run."""
    path = markers / f"{sid}.{name}"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (or is a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] in ("Z", "X")
    except FileNotFoundError:
        return True
