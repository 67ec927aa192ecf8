"""Sessions as a user sees them: handler inputs, prints, errors, CLI views and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import AK, Stack, write_project

MANIFEST = """\
version: v1
project:
  name: {name}
  vars:
    - name: GREETING
      value: hi there
  triggers:
    - name: hook
      call: handlers.py:on_any
      webhook: {{}}
    - name: only_put
      event_type: put
      call: handlers.py:on_put
      webhook: {{}}
    - name: filtered
      call: handlers.py:on_any
      filter: data.url.path.endsWith("/yes") && event_type == "get"
      webhook: {{}}
    - name: boom
      call: handlers.py:explode
      webhook: {{}}
    - name: boom_long
      call: handlers.py:explode_long
      webhook: {{}}
    - name: boom_huge
      call: handlers.py:explode_huge
      webhook: {{}}
    - name: dies_loudly
      call: handlers.py:dies_loudly
      webhook: {{}}
    - name: missing
      call: broken.py:handler
      webhook: {{}}
    - name: asyncy
      call: handlers.py:on_async
      webhook: {{}}
    - name: chatty
      call: handlers.py:chatty
      webhook: {{}}
"""

HANDLERS = """\
import os
import sys
import asyncio

import helper

print("module loaded")


def on_any(event, session_id):
    d = event.data
    print("method", d.method, event["event_type"], session_id == event.session_id)
    print("suffix", repr(d.url.path_suffix), "query", dict(d.url.query))
    print("body", repr(d.body), d.body.text, d.body["json"], d.body.form)
    print("header", d.headers.get("X-Kitteh"))
    print("a", "b", sep="-", end="!\\n")
    print("to stderr", file=sys.stderr)
    print("multi\\nline")
    print("greeting", os.environ.get("GREETING"), "secret key?", "AK_NATS_URL" in os.environ)
    print(helper.double(21))
    event["data"]["extra"] = 1
    print("extra", event.data.extra)
    try:
        event.data.nope = 2
    except NotImplementedError:
        print("attribute assignment refused")
    return {"ok": True}


def on_put(event):
    print("put!")


def explode(event):
    helper.fail("boom")


def explode_long(event):
    helper.fail("boom " * 40_000)


def explode_huge(event):
    helper.fail("start " + "boom " * (2 << 20) + "end")


def dies_loudly(event):
    for i in range(30):
        os.write(2, b"line %d " % i + b"y" * (1 << 20) + b"\\n")
    os.write(2, b"the last words\\n")
    os._exit(3)


async def on_async(event):
    await asyncio.sleep(0)
    print("async done")


def chatty(event):
    for i in range(2500):
        print("line", i)
"""

HELPER = """\
def double(n):
    return n * 2


def fail(msg):
    raise ValueError(msg)
"""

BROKEN = """\
import no_such_module_here


def handler(event):
    pass
"""


@pytest.fixture(scope="module")
def project(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = write_project(
        tmp_path_factory.mktemp("proj") / "p",
        {
            "autokitteh.yaml": MANIFEST.format(name="sessions_e2e"),
            "handlers.py": HANDLERS,
            "helper.py": HELPER,
            "broken.py": BROKEN,
            ".hidden.py": "raise SystemExit",
            "__pycache__/x.pyc": "junk",
        },
    )
    paths = stack.deploy_paths(root)
    assert set(paths) == {
        "hook",
        "only_put",
        "filtered",
        "boom",
        "boom_long",
        "boom_huge",
        "dies_loudly",
        "missing",
        "asyncy",
        "chatty",
    }
    return paths


def _session_for(stack: Stack, event_id: str) -> dict[str, str]:
    args = ("-p", "sessions_e2e", "--event-id", event_id, "-j")
    out = stack.ak("session", "list", *args, check=True).stdout
    matching = [json.loads(x) for x in out.splitlines()]
    assert len(matching) == 1 and matching[0]["event_id"] == event_id, out
    return stack.wait_session(matching[0]["session_id"])


def _fire(
    stack: Stack,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    status, hdrs, _ = stack.request(method, path, body, headers)
    assert status == 202
    return hdrs["autokitteh-event-id"]


def _wait_for_session(stack: Stack, event_id: str) -> dict[str, str]:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = stack.ak("session", "list", "-p", "sessions_e2e", "-j", check=True).stdout
        if event_id in out:
            return _session_for(stack, event_id)
        time.sleep(0.2)
    raise AssertionError(f"no session for {event_id}:\n{stack.output()[-3000:]}")


def test_handler_inputs_and_print_capture(stack: Stack, project: dict[str, str]) -> None:
    eid = _fire(
        stack,
        "POST",
        project["hook"] + "/a/b?x=1&x=2&y=",
        b"k=v&k=w",
        {"Content-Type": "application/x-www-form-urlencoded", "X-Kitteh": "meow"},
    )
    s = _wait_for_session(stack, eid)
    assert s["state"] == "COMPLETED", s
    prints = stack.ak("session", "prints", s["session_id"], "-n", check=True).stdout
    assert prints == (
        "module loaded\n"
        "method POST post True\n"
        "suffix 'a/b' query {'x': '1, 2', 'y': ''}\n"
        "body b'k=v&k=w' k=v&k=w None {'k': 'v, w'}\n"
        "header meow\n"
        "a-b!\n"
        "to stderr\n"
        "multi\nline\n"
        "greeting hi there secret key? False\n"
        "42\n"
        "extra 1\n"
        "attribute assignment refused\n"
    )
    log = stack.ak("session", "log", s["session_id"], "-j", check=True).stdout.splitlines()
    records = [json.loads(x) for x in log]
    assert records[0]["state"] == {"created": {}}
    assert "running" in records[1]["state"]
    assert records[2]["print"] == {"text": "module loaded"}
    assert records[-1]["state"] == {"completed": {}}


def test_what_a_stranger_sent_is_printed_with_its_control_characters_escaped(
    stack: Stack, project: dict[str, str]
) -> None:
    """A handler that prints a webhook's body cannot have a stranger's escape sequences
    (a window title, a carriage return and a forged line) act on its reader's terminal;
    ``-j`` keeps the exact text."""
    sent = "\x1b]0;owned\x07\rforged \u202eline"
    eid = _fire(stack, "POST", project["hook"], sent.encode(), {"Content-Type": "text/plain"})
    sid = _wait_for_session(stack, eid)["session_id"]
    shown = "\\x1b]0;owned\\x07\\rforged \\u202eline"
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()
    body = next(x for x in prints if x.startswith("body "))
    assert f" {shown} " in body and "\x1b" not in body and "\r" not in body, body
    log = stack.ak("session", "log", sid, "-n", check=True).stdout
    assert "Print: body " in log and shown in log and "\x1b" not in log
    exact = stack.ak("session", "prints", sid, "-j", check=True).stdout.splitlines()
    assert any(f" {sent} " in json.loads(x)["print"]["text"] for x in exact)


def test_event_type_and_filter_select_sessions(stack: Stack, project: dict[str, str]) -> None:
    no = _fire(stack, "POST", project["only_put"])
    no2 = _fire(stack, "GET", project["filtered"] + "/no")
    yes = _fire(stack, "PUT", project["only_put"])
    s = _wait_for_session(stack, yes)
    assert stack.ak("session", "prints", s["session_id"], "-n").stdout == "module loaded\nput!\n"
    yes2 = _fire(stack, "GET", project["filtered"] + "/yes")
    assert _wait_for_session(stack, yes2)["state"] == "COMPLETED"
    sessions = stack.ak("session", "list", "-p", "sessions_e2e", "-j", check=True).stdout
    assert no not in sessions and no2 not in sessions
    # Unmatched events are still recorded.
    ev = json.loads(stack.ak("event", "get", no, "-j", check=True).stdout)
    assert ev["event_type"] == "post" and ev["data"]["method"] == "POST"


def test_uncaught_exception_is_error_with_user_traceback(
    stack: Stack, project: dict[str, str]
) -> None:
    s = _wait_for_session(stack, _fire(stack, "POST", project["boom"]))
    assert s["state"] == "ERROR"
    assert s["error"] == "error: ValueError('boom')"
    tb = s["traceback"]
    assert 'handlers.py", line' in tb and 'helper.py", line' in tb and "_worker.py" not in tb
    assert tb.rstrip().endswith("ValueError: boom")
    text = stack.ak("session", "log", s["session_id"], "-n").stdout
    assert "State: ERROR error: ValueError('boom')" in text


def test_an_exception_with_a_long_message_is_the_sessions_error(
    stack: Stack, project: dict[str, str]
) -> None:
    """(Its `done` frame's header is larger than one read of the worker's pipe.)"""
    s = _wait_for_session(stack, _fire(stack, "POST", project["boom_long"]))
    assert s["state"] == "ERROR"
    assert s["error"].startswith("error: ValueError('boom boom "), s["error"][:300]


def test_an_exception_with_a_huge_message_is_the_sessions_error_cut(
    stack: Stack, project: dict[str, str]
) -> None:
    """A message of megabytes (more than the worker's frame to the runner can hold): the
    session still ends with it, its start and its end kept and the middle cut."""
    s = _wait_for_session(stack, _fire(stack, "POST", project["boom_huge"]))
    assert s["state"] == "ERROR"
    error, tb = s["error"], s["traceback"]
    assert error.startswith("error: ValueError('start boom boom "), error[:300]
    assert error.endswith(" boom end')") and "\n[... cut: " in error
    assert len(error) < 40_000 and len(tb) < 40_000
    assert 'helper.py", line' in tb and tb.rstrip().endswith("boom boom end")


def test_a_worker_that_dies_after_huge_stderr_lines_ends_its_session_with_their_tail(
    stack: Stack, project: dict[str, str]
) -> None:
    """Its last lines of stderr are the session's traceback, each cut to its start: the
    runner keeps no more of them than that."""
    s = _wait_for_session(stack, _fire(stack, "POST", project["dies_loudly"]))
    assert s["state"] == "ERROR"
    assert s["error"] == "error: worker process exited with code 3 before the handler finished"
    lines = s["traceback"].splitlines()
    assert len(lines) == 20 and lines[-1] == "the last words", lines[-1][:300]
    cut = f" [... cut: a line of {(1 << 20) + 8:,} bytes, its first 4,096 kept]"
    assert lines[-2] == "line 29 " + "y" * (4096 - 8) + cut


def test_missing_module_gives_error_and_hint(stack: Stack, project: dict[str, str]) -> None:
    s = _wait_for_session(stack, _fire(stack, "POST", project["missing"]))
    assert s["state"] == "ERROR"
    assert "No module named 'no_such_module_here'" in s["error"]
    prints = stack.ak("session", "prints", s["session_id"], "-n", check=True).stdout
    assert "No module named 'no_such_module_here'" in prints
    assert "Hint: no module 'no_such_module_here'" in prints
    assert "requirements.txt next to autokitteh.yaml" in prints
    assert f"{sys.executable} -m pip install <package>" in prints
    assert "(this Python was given by AK_WORKER_PYTHON)" in prints


def test_async_handler(stack: Stack, project: dict[str, str]) -> None:
    s = _wait_for_session(stack, _fire(stack, "GET", project["asyncy"]))
    assert s["state"] == "COMPLETED"
    assert stack.ak("session", "prints", s["session_id"], "-n").stdout.endswith("async done\n")


def test_a_long_session_prints_and_logs_whole(stack: Stack, project: dict[str, str]) -> None:
    """More records than one answer of the store holds: the CLI reads them page by page."""
    s = _wait_for_session(stack, _fire(stack, "GET", project["chatty"]))
    assert stack.wait_session(s["session_id"])["state"] == "COMPLETED"
    prints = stack.ak("session", "prints", s["session_id"], "-n", check=True).stdout
    assert prints == "module loaded\n" + "".join(f"line {i}\n" for i in range(2500))
    log = stack.ak("session", "log", s["session_id"], "-j", check=True).stdout.splitlines()
    assert sum('"print"' in x for x in log) == 2501 and '"completed"' in log[-1]


def test_session_list_pages(stack: Stack, project: dict[str, str]) -> None:
    for _ in range(3):
        _wait_for_session(stack, _fire(stack, "GET", project["asyncy"]))
    first = stack.ak("session", "list", "-p", "sessions_e2e", "--page-size", "2", check=True)
    *lines, token_line = first.stdout.splitlines()
    assert len(lines) == 2 and all(x.startswith('session_id:"ses_') for x in lines), lines
    assert token_line.startswith("next-page-token: "), first.stdout
    token = token_line.removeprefix("next-page-token: ")
    args = ("-p", "sessions_e2e", "--page-size", "2", "--next-page-token", token, "-j")
    second = stack.ak("session", "list", *args, check=True)
    older = [json.loads(x) for x in second.stdout.splitlines()]  # JSON only: token on stderr
    assert len(older) == 2 and second.stderr.startswith("next-page-token: ")
    assert not {s["session_id"] for s in older} & {x.split('"')[1] for x in lines}
    res = stack.ak("session", "list", "--next-page-token", "garbage")
    assert res.returncode == 40 and "invalid page token" in res.stderr


def test_webhook_errors(stack: Stack, project: dict[str, str], tmp_path: Path) -> None:
    assert stack.request("POST", "/webhooks/" + "0" * 26)[0] == 404
    before = stack.ak("event", "list", "-j", check=True).stdout.count("\n")
    status, _, _ = stack.request("POST", project["hook"], b"x" * (512 * 1024 + 1))
    assert status == 413
    assert stack.ak("event", "list", "-j", check=True).stdout.count("\n") == before
    status, _, _ = stack.request("POST", project["hook"], b"x" * (512 * 1024))
    assert status == 202


def test_uploaded_files_skip_hidden_and_pycache(stack: Stack, project: dict[str, str]) -> None:
    # .hidden.py would exit the worker if it were imported; it is not even uploaded.
    s = _wait_for_session(stack, _fire(stack, "GET", project["asyncy"]))
    assert s["state"] == "COMPLETED"


def test_cli_errors_and_exit_codes(stack: Stack, tmp_path: Path) -> None:
    res = stack.ak("session", "get", "ses_" + "0" * 26)
    assert res.returncode == 44 and res.stderr.startswith("Error: ")
    res = stack.ak("project", "get", "nope_nope")
    assert (res.returncode, res.stderr) == (44, 'Error: project "nope_nope" not found\n')
    res = stack.ak("deploy", "--manifest", str(tmp_path / "bad.yaml"))
    assert (res.returncode, res.stderr) == (
        44,
        f"Error: open {tmp_path / 'bad.yaml'}: no such file or directory\n",
    )
    res = stack.ak("session", "list", "-s", "SLEEPY")
    assert res.returncode == 40 and "invalid state" in res.stderr
    bad = write_project(
        tmp_path / "bad",
        {
            "autokitteh.yaml": (
                "version: v1\nproject:\n  name: bad_one\n  triggers:\n"
                "    - name: t\n      webhook: {}\n      colour: red\n"
                "    - name: u\n      webhook: {}\n      filter: 'data.('\n"
            )
        },
    )
    res = stack.ak("deploy", "--manifest", str(bad / "autokitteh.yaml"))
    assert res.returncode == 40
    assert "project.triggers[0].colour: unknown field" in res.stderr
    assert "project.triggers[1].filter: invalid filter" in res.stderr
    assert stack.ak("project", "get", "bad_one").returncode == 44  # nothing was created
    res = stack.ak("deploy", "--manifest", str(bad / "autokitteh.yaml"), "--file", "nope.py")
    assert (res.returncode, res.stderr) == (44, "Error: stat nope.py: no such file or directory\n")


def test_config_where(stack: Stack) -> None:
    res = stack.ak("config", "where", check=True)
    data, cfg = stack.env["XDG_DATA_HOME"], stack.env["XDG_CONFIG_HOME"]
    assert res.stdout == (
        f"Config home directory: {cfg}/autokitteh\n"
        f"Data home directory:   {data}/autokitteh\n"
        f"Worker Python:         {sys.executable} (from AK_WORKER_PYTHON)\n\n"
        "Override environment variable names:\nXDG_CONFIG_HOME\nXDG_DATA_HOME\n"
        "AK_WORKER_PYTHON\n"
    )
    env = {k: v for k, v in stack.env.items() if k != "AK_WORKER_PYTHON"}
    res = subprocess.run([AK, "config", "where"], env=env, capture_output=True, text=True)
    assert f"Python venv:           {data}/autokitteh/venv\n" in res.stdout
    assert f"Python packages list:  {cfg}/autokitteh/python-requirements.txt\n" in res.stdout
    assert f"Project venvs:         {data}/autokitteh/venvs\n" in res.stdout


def test_second_stack_cannot_take_the_same_port(stack: Stack, tmp_path: Path) -> None:
    env = {**stack.env, "XDG_DATA_HOME": str(tmp_path / "d2")}
    res = subprocess.run([AK, "up"], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert res.stderr.startswith(f"Error: cannot listen on {stack.env['AK_HTTP__ADDR']}")
