"""Waiting and talking: subscriptions, next_event, signals, child sessions, the values store."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Stack, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: waiting
  triggers:
    - name: meow_webhook
      event_type: get
      call: program.py:on_http_get_meow
      webhook: {}
    - name: source_only
      webhook: {}
    - name: sync_hook
      call: program.py:sync_answer
      webhook: {}
      is_sync: true
    - name: sync_nobody
      webhook: {}
      is_sync: true
    - name: sync_quiet
      call: program.py:sync_silent
      webhook: {}
      is_sync: true
    - name: sync_raising
      call: program.py:sync_raises
      webhook: {}
      is_sync: true
    - name: sync_waiting
      call: program.py:sync_waits
      webhook: {}
      is_sync: true
    - name: sync_binary
      call: program.py:sync_png
      webhook: {}
      is_sync: true
"""
HANDLERS = [
    "short_wait",
    "bad_subscribe",
    "counter",
    "values_ops",
    "pinger",
    "replayed_wait",
    "stoppable",
    "misuse",
    "failing_parent",
    "sleepy",
    "signal_wait",
    "sync_silent",
    "busy_activity",
    "signal_forever",
    "cross_project",
    "many_keys",
]

# The seed's "Waiting For Events" example, verbatim.
SEED = '''\
from datetime import timedelta

import autokitteh


def on_http_get_meow(event):
    """This workflow is triggered by a predefined HTTP GET request event."""
    print("Got a meow, waiting for a woof")

    # Wait (up to 1 minute) for a subsequent webhook
    # event where the URL path ends with "woof".
    filter = "data.url.path.endsWith('/woof')"
    sub = autokitteh.subscribe("meow_webhook", filter)
    delta = timedelta(minutes=1)
    next = autokitteh.next_event(sub, timeout=delta)

    if next:
        print("Got a woof:", next)
    else:
        print("Timeout!")
'''

MORE = """
import os
import time


def short_wait(event):
    sub = autokitteh.subscribe("source_only", "data.method == 'POST'")
    open(os.path.join(os.environ["MARKER_DIR"], "subscribed"), "w").close()
    first = autokitteh.next_event(sub, timeout=20)
    print("first", first.body.text, first.method)
    ev = autokitteh.next_event([sub], timeout=20, full=True)
    print("second", ev.event_type, ev.data.body.json["n"])
    print("third", autokitteh.next_event(sub, timeout=0.5))


def bad_subscribe(event):
    for source, flt in (("nope", ""), ("source_only", "data.(")):
        try:
            autokitteh.subscribe(source, flt)
        except autokitteh.AutoKittehError as e:
            print("refused:", str(e).splitlines()[0])


def counter(event):
    for _ in range(5):
        autokitteh.add_values("hits", 1)


def values_ops(event):
    print("hits", autokitteh.get_value("hits"))
    autokitteh.set_value("cfg", {"a": [1, 2]})
    print("get", autokitteh.get_value("cfg").a, autokitteh.get_value("missing"))
    print("cas", autokitteh.check_and_set_value("flag", None, 1),
          autokitteh.check_and_set_value("flag", None, 2), autokitteh.get_value("flag"))
    print("big", autokitteh.add_values("big", 2**70) == 2**70)
    autokitteh.store["mapped"] = "yes"
    del autokitteh.store["mapped"]
    print("keys", autokitteh.list_values_keys())
    try:
        autokitteh.add_values("cfg", 1)
    except autokitteh.AutoKittehError as e:
        print("refused:", e)


def pinger(event):
    me = event.session_id
    pong = autokitteh.start("program.py:ponger", {"parent": me})
    for i in range(3):
        autokitteh.signal(pong, "ping", i)
        print("pong", autokitteh.next_signal("pong", timeout=20).payload)
    print("end", autokitteh.next_signal(pong, timeout=20).payload)
    try:
        autokitteh.signal(pong, "ping", 99)  # it has ended
    except autokitteh.AutoKittehError as e:
        print("refused:", e)


def ponger(event):
    for _ in range(3):
        n = autokitteh.next_signal("ping", timeout=20).payload
        autokitteh.signal(event.data.parent, "pong", n * 10)
    return "bye"


def stoppable(event):
    sub = autokitteh.subscribe("source_only", "false")
    print("waiting forever")
    autokitteh.next_event(sub)


PNG = b"\\x89PNG\\r\\n\\x1a\\n\\x00\\x00\\x00\\rIHDR\\xff\\xfe"


def sync_png(event):
    autokitteh.http_outcome(200, body=PNG, headers={"Content-Type": "image/png"})


def sync_answer(event):
    autokitteh.http_outcome(299, json={"cat": "meow"}, headers={"X-Kitteh": "yes"})
    autokitteh.set_value("pub", {"x": 1})
    autokitteh.publish_value("pub")
    autokitteh.set_value("secret_value", 2)


@autokitteh.activity
def wait_inside(sub):
    return autokitteh.next_event(sub, timeout=1)


def misuse(event):
    sub = autokitteh.subscribe("source_only")
    for attempt in (lambda: wait_inside(sub), lambda: autokitteh.set_value("big", "x" * 70000)):
        try:
            attempt()
        except autokitteh.AutoKittehError as e:
            print("refused:", e)


def broken_child(event):
    raise RuntimeError("child failed")


def failing_parent(event):
    child = autokitteh.start("program.py:broken_child")
    print("child", autokitteh.next_signal(child, timeout=20).payload)


def sleepy(event):
    print("sleeping")
    time.sleep(60)


def signal_wait(event):
    open(os.path.join(os.environ["MARKER_DIR"], "signal_waiting"), "w").close()
    got = autokitteh.next_signal("wake", timeout=60)
    print("woke with", got.payload)


def waker(event):
    autokitteh.signal(event.data.target, "wake", "hello")


@autokitteh.activity
def spin():
    time.sleep(60)


def busy_activity(event):
    print("in activity")
    spin()


def signal_forever(event):
    print("waiting for a signal")
    autokitteh.next_signal("never")


def cross_project(event):
    try:
        autokitteh.start("t.py:tick", {"from": "waiting"}, project="ticker")
    except autokitteh.AutoKittehError as e:
        print("refused:", e)
    child = autokitteh.start("program.py:manual", {"from": "waiting"}, project="waiting")
    print("own project child", autokitteh.next_signal(child, timeout=20).payload)


def many_keys(event):
    for k in autokitteh.list_values_keys():
        autokitteh.del_value(k)
    try:
        for i in range(65):
            autokitteh.set_value(f"k{i}", i)
    except autokitteh.AutoKittehError as e:
        print(len(autokitteh.list_values_keys()), "refused:", e)


def sync_silent(event):
    print("no outcome")


def sync_raises(event):
    raise RuntimeError("the handler's own words, token=s3cr3t")


def sync_waits(event):
    autokitteh.next_signal("never", timeout=60)


def manual(event):
    print("inputs", dict(event.data), event.event_id)


def replayed_wait(event):
    sub = autokitteh.subscribe("source_only", "")
    print("waiting")
    open(os.path.join(os.environ["MARKER_DIR"], "waiting"), "w").close()
    ev = autokitteh.next_event(sub, timeout=60)
    print("got", ev.body.text)
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str], Path]]:
    home = tmp_path_factory.mktemp("waiting")
    markers = home / "markers"
    markers.mkdir()
    stack = start_stack(
        home,
        {
            "MARKER_DIR": str(markers),
            "AK_JOBS__ACK_WAIT": "3",
            "AK_WEBHOOKS__RESPONSE_TIMEOUT": "5",
        },
    )
    manifest = MANIFEST + "".join(
        f"    - name: {h}\n      call: program.py:{h}\n      webhook: {{}}\n" for h in HANDLERS
    )
    proj = write_project(home / "p", {"autokitteh.yaml": manifest, "program.py": SEED + MORE})
    paths = stack.deploy_paths(proj)
    try:
        yield stack, paths, markers
    finally:
        stack.stop()


def _fire(stack: Stack, path: str, method: str = "POST", body: bytes = b"{}") -> str:
    status, headers, _ = stack.request(method, path, body)
    assert status == 202
    return str(headers["autokitteh-event-id"])


def _session_of(stack: Stack, eid: str) -> str:
    return stack.session_of("waiting", eid)


def _finish(stack: Stack, sid: str) -> tuple[dict[str, Any], list[str]]:
    session = stack.wait_session(sid, timeout=60)
    return session, stack.ak("session", "prints", sid, "-n", check=True).stdout.splitlines()


def _wait_file(path: Path) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, path
        time.sleep(0.05)


def test_seed_meow_woof(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    sid = _session_of(stack, _fire(stack, paths["meow_webhook"], "GET", b""))
    stack.wait_output("subscribe", "session", "log", sid, "-j")
    _fire(stack, paths["meow_webhook"] + "/woof", "GET", b"")
    session, prints = _finish(stack, sid)
    assert session["state"] == "COMPLETED"
    assert prints[0] == "Got a meow, waiting for a woof"
    assert prints[1].startswith("Got a woof: {'method': 'GET'")
    assert paths["meow_webhook"] + "/woof" in prints[1]


def test_buffered_events_in_order_and_timeout(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, markers = env
    sid = _session_of(stack, _fire(stack, paths["short_wait"]))
    _wait_file(markers / "subscribed")
    _fire(stack, paths["source_only"], "GET", b"ignored by the filter")
    _fire(stack, paths["source_only"], "POST", b"one")
    _fire(stack, paths["source_only"], "POST", b'{"n": 2}')
    session, prints = _finish(stack, sid)
    assert prints == ["first one POST", "second post 2", "third None"], prints


def test_subscribe_errors(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    _, prints = _finish(stack, _session_of(stack, _fire(stack, paths["bad_subscribe"])))
    assert prints[0] == 'refused: subscribe: subscribe(nope, ) -> source "nope" not found'
    assert prints[1].startswith("refused: subscribe: invalid filter")


def test_values_atomic_under_concurrency(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    sids = [_session_of(stack, _fire(stack, paths["counter"])) for _ in range(8)]
    for sid in sids:
        assert _finish(stack, sid)[0]["state"] == "COMPLETED"
    _, prints = _finish(stack, _session_of(stack, _fire(stack, paths["values_ops"])))
    assert prints == [
        "hits 40",  # 8 concurrent sessions x 5 atomic increments
        "get [1, 2] None",
        "cas True False 1",
        "big True",
        "keys ['big', 'cfg', 'flag', 'hits']",
        "refused: value: add: the value of 'cfg' is not a number",
    ]


def test_parent_and_child(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    session, prints = _finish(stack, _session_of(stack, _fire(stack, paths["pinger"])))
    assert session["state"] == "COMPLETED", session
    assert prints[:4] == ["pong 0", "pong 10", "pong 20", "end {'completed': True, 'value': 'bye'}"]
    assert len(prints) == 5 and prints[4].startswith('refused: signal: session "ses_'), prints
    assert prints[4].endswith('" has ended: it takes no more signals'), prints


def test_replay_of_a_session_waiting_in_next_event(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, markers = env
    sid = _session_of(stack, _fire(stack, paths["replayed_wait"]))
    _wait_file(markers / "waiting")
    stack.kill_runner()
    _fire(stack, paths["source_only"], "POST", b"while down")
    session, prints = _finish(stack, sid)
    assert session["state"] == "COMPLETED"
    assert prints == ["waiting", "got while down"]


def test_session_control(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    sid = _session_of(stack, _fire(stack, paths["stoppable"]))
    stack.wait_output("waiting forever", "session", "prints", sid, "-n")
    res = stack.ak("session", "stop", sid, "--reason", "enough")
    assert (res.returncode, res.stdout) == (0, "")
    session = stack.wait_session(sid, timeout=30)
    assert session["state"] == "STOPPED"
    log = stack.ak("session", "log", sid, "-n", check=True).stdout
    assert log.rstrip().endswith("State: STOPPED enough")
    again = stack.ak("session", "stop", sid)
    assert again.returncode == 42 and "already in a final state" in again.stderr

    res = stack.ak(
        "session",
        "start",
        "-o",
        "waiting",
        "-p",
        "program.py:manual",
        "-I",
        "n=3",
        "-I",
        'who="me"',
        check=True,
    )
    started = res.stdout.strip().removeprefix("session_id: ")
    assert stack.wait_session(started)["state"] == "COMPLETED"
    expected = ["inputs {'n': 3, 'who': 'me'} None"]
    assert stack.ak("session", "prints", started, "-n").stdout.splitlines() == expected
    again_id = stack.ak("session", "restart", started, check=True).stdout.strip()
    again_id = again_id.removeprefix("session_id: ")
    assert again_id != started and stack.wait_session(again_id)["state"] == "COMPLETED"
    assert stack.ak("session", "prints", again_id, "-n").stdout.splitlines() == expected
    res = stack.ak("session", "start", "-p", "program.py:manual")
    assert res.returncode == 1 and "deployment-id project" in res.stderr


def test_event_commands(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    eid = _fire(stack, paths["bad_subscribe"])
    _session_of(stack, eid)
    new = stack.ak("event", "redispatch", eid, check=True).stdout
    assert re.fullmatch(r"evt_[0-9a-z]{26}\n", new) and new.strip() != eid
    assert stack.wait_session(_session_of(stack, new.strip()))["state"] == "COMPLETED"
    ok = stack.ak("event", "verify-filter", "data.method == 'GET'", check=True)
    assert ok.stdout == "result: filter expression is valid\n"
    bad = stack.ak("event", "verify-filter", "data.(")
    assert bad.returncode == 1 and bad.stderr.startswith("Error: verify filter: invalid filter")


def test_triggers_and_deployments_from_the_cli(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, _, _ = env
    res = stack.ak(
        "trigger",
        "create",
        "-n",
        "adhoc",
        "-p",
        "waiting",
        "-w",
        "-l",
        "program.py:manual",
        check=True,
    )
    path = res.stdout.splitlines()[1].removeprefix("webhook path: ")
    assert stack.request("POST", path, b"x")[0] == 202
    stack.ak("trigger", "delete", "adhoc", "-p", "waiting", check=True)
    assert stack.request("POST", path, b"x")[0] == 404
    deps = [
        json.loads(x)
        for x in stack.ak(
            "deployment", "list", "-p", "waiting", "-j", check=True
        ).stdout.splitlines()
    ]
    active = next(d["deployment_id"] for d in deps if d["state"] == "ACTIVE")
    stack.ak("deployment", "deactivate", active, check=True)
    source = _source_path(stack)
    assert stack.request("POST", source, b"x")[0] == 404  # no active deployment
    stack.ak("deployment", "activate", active, check=True)
    assert stack.request("POST", source, b"x")[0] == 202


def _source_path(stack: Stack) -> str:
    t = json.loads(stack.ak("trigger", "get", "source_only", "-p", "waiting", "-j").stdout)
    return f"/webhooks/{t['webhook_slug']}"


def test_sync_webhook_and_published_values(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    status, headers, body = stack.request("POST", paths["sync_hook"], b"{}")
    assert (status, json.loads(body)) == (299, {"cat": "meow"})
    assert headers["x-kitteh"] == "yes" and headers["content-type"] == "application/json"
    assert headers["autokitteh-event-id"].startswith("evt_")
    status, _, body = stack.request("POST", paths["sync_nobody"], b"{}")
    assert (status, body) == (502, b"No sessions were started or signaled for sync webhook\n")
    # Bytes that are not text go as they are (they were decoded, their bad bytes replaced).
    status, headers, body = stack.request("POST", paths["sync_binary"], b"{}")
    assert (status, headers["content-type"]) == (200, "image/png")
    assert body == b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"
    pid = json.loads(stack.ak("project", "get", "waiting", "-j", check=True).stdout)["project_id"]
    deadline = time.monotonic() + 10
    while (
        stack.request("GET", f"/store/{pid}/secret_value")[0] != 404
        or stack.request("GET", f"/store/{pid}/pub")[0] != 200
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert json.loads(stack.request("GET", f"/store/{pid}/pub")[2]) == {"x": 1}
    assert stack.request("GET", "/store/not-a-project/pub")[0] == 400


def test_schedule_starts_tick_sessions(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, _, _ = env
    manifest = (
        "version: v1\nproject:\n  name: ticker\n  triggers:\n"
        '    - name: every_second\n      schedule: "* * * * * *"\n      call: t.py:tick\n'
    )
    code = "def tick(event):\n    print('tick', event.event_type, dict(event.data))\n"
    proj = write_project(stack.log.parent / "ticker", {"autokitteh.yaml": manifest, "t.py": code})
    stack.ak("deploy", "--manifest", str(proj / "autokitteh.yaml"), check=True)
    deadline = time.monotonic() + 20
    while (
        len(
            done := stack.ak(
                "session", "list", "-p", "ticker", "-s", "COMPLETED", "-j"
            ).stdout.splitlines()
        )
        < 2
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # The newest session may still be running: look at a completed one.
    sid = json.loads(done[0])["session_id"]
    assert stack.ak("session", "prints", sid, "-n", check=True).stdout == "tick tick {}\n"
    # Its trace is rooted at the tick.
    while True:
        spans = stack.spans(sid)
        if len(spans) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(s["name"], s["parent_id"]) for s in spans[:1]] == [("schedule tick", "")]
    assert spans[1]["name"] == "dispatch" and spans[1]["parent_id"] == spans[0]["span_id"]
    (proj / "autokitteh.yaml").write_text("version: v1\nproject:\n  name: ticker\n")
    stack.ak("deploy", "--manifest", str(proj / "autokitteh.yaml"), check=True)
    time.sleep(3)
    count = len(stack.ak("session", "list", "-p", "ticker").stdout.splitlines())
    time.sleep(2)
    assert len(stack.ak("session", "list", "-p", "ticker").stdout.splitlines()) == count


def test_misuse_is_refused(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    _, prints = _finish(stack, _session_of(stack, _fire(stack, paths["misuse"])))
    assert prints[0] == (
        "refused: next_event inside activity: waiting for events is not allowed in an "
        "activity; call it from the handler's own code"
    )
    assert (
        prints[1].startswith("refused: value: value is 70")
        and "over the 65536 byte limit" in prints[1]
    )


def test_child_that_fails(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    session, prints = _finish(stack, _session_of(stack, _fire(stack, paths["failing_parent"])))
    assert session["state"] == "COMPLETED" and prints == ["child {'completed': False}"]


def test_stop_during_a_durable_sleep(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    sid = _session_of(stack, _fire(stack, paths["sleepy"]))
    stack.wait_output("sleep", "session", "log", sid, "-j")
    stack.ak("session", "stop", sid, "-r", "wake up", check=True)
    assert stack.wait_session(sid, timeout=20)["state"] == "STOPPED"


def test_replay_of_a_session_waiting_in_next_signal(
    env: tuple[Stack, dict[str, str], Path],
) -> None:
    stack, paths, markers = env
    sid = _session_of(stack, _fire(stack, paths["signal_wait"]))
    _wait_file(markers / "signal_waiting")
    stack.kill_runner()
    res = stack.ak(
        "session",
        "start",
        "-o",
        "waiting",
        "-p",
        "program.py:waker",
        "-D",
        "-I",
        f'target="{sid}"',
        check=True,
    )
    waker = res.stdout.strip().removeprefix("session_id: ")
    session, prints = _finish(stack, sid)
    assert session["state"] == "COMPLETED" and prints == ["woke with hello"]
    assert stack.wait_session(waker)["state"] == "COMPLETED"


@pytest.mark.parametrize(
    ("trigger", "state"), [("sync_quiet", "COMPLETED"), ("sync_raising", "ERROR")]
)
def test_a_sync_webhook_whose_session_ended_without_an_outcome_is_answered_then(
    env: tuple[Stack, dict[str, str], Path], trigger: str, state: str
) -> None:
    """Not after the response timeout (AutoKitteh waits it out and answers 504, as this
    stack would after 5 s): the session's end is heard. What the handler raised stays out
    of the answer."""
    stack, paths, _ = env
    status, headers, body = stack.request("POST", paths[trigger], b"{}")
    sid = _session_of(stack, headers["autokitteh-event-id"])
    assert (status, body.decode()) == (
        502,
        f"Bad Gateway: session {sid} ended ({state}) without an outcome for this event; "
        f"ak session log {sid} shows what it did\n",
    )
    assert stack.wait_session(sid)["state"] == state


def test_sync_webhook_timeout(env: tuple[Stack, dict[str, str], Path]) -> None:
    """A session that has not ended and gave no outcome: 504 once the timeout has passed."""
    stack, paths, _ = env
    status, headers, body = stack.request("POST", paths["sync_waiting"], b"{}")
    assert (status, body) == (504, b"Gateway Timeout\n")
    sid = _session_of(stack, headers["autokitteh-event-id"])
    stack.ak("session", "stop", sid, check=True)
    assert stack.wait_session(sid)["state"] == "STOPPED"


def test_redeploy_drains_the_old_deployment(env: tuple[Stack, dict[str, str], Path]) -> None:
    stack, paths, _ = env
    sid = _session_of(stack, _fire(stack, paths["stoppable"]))
    stack.wait_output("waiting forever", "session", "prints", sid, "-n")
    old = json.loads(stack.ak("session", "get", sid, "-j", check=True).stdout)["deployment_id"]
    stack.ak("deployment", "activate", _new_deployment(stack), check=True)
    state = json.loads(stack.ak("deployment", "get", old, "-j", check=True).stdout)["state"]
    assert state == "DRAINING"
    # Stop every session still running on it (earlier tests leave a meow session waiting).
    for state in ("RUNNING", "CREATED"):
        for line in stack.ak(
            "session", "list", "-p", "waiting", "-s", state, "-j"
        ).stdout.splitlines():
            live = json.loads(line)
            if live["deployment_id"] == old:
                stack.ak("session", "stop", live["session_id"])
                stack.wait_session(live["session_id"])
    deadline = time.monotonic() + 10
    while json.loads(stack.ak("deployment", "get", old, "-j").stdout)["state"] != "INACTIVE":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _new_deployment(stack: Stack) -> str:
    """A second deployment of the project's current build (not yet active)."""
    deps = [
        json.loads(x)
        for x in stack.ak("deployment", "list", "-p", "waiting", "-j").stdout.splitlines()
    ]
    active = next(d for d in deps if d["state"] == "ACTIVE")
    return _create_deployment(stack, active["build_id"])


def _create_deployment(stack: Stack, build_id: str) -> str:
    return str(stack.api("deployment.create", project="waiting", build_id=build_id))


@pytest.mark.parametrize(
    ("handler", "marker"),
    [("busy_activity", "in activity"), ("signal_forever", "waiting for a signal")],
)
def test_stop_in_an_activity_or_next_signal(
    env: tuple[Stack, dict[str, str], Path], handler: str, marker: str
) -> None:
    stack, paths, _ = env
    sid = _session_of(stack, _fire(stack, paths[handler]))
    stack.wait_output(marker, "session", "prints", sid, "-n")
    stack.ak("session", "stop", sid, "-r", "enough", check=True)
    assert stack.wait_session(sid, timeout=20)["state"] == "STOPPED"


def test_child_only_in_its_own_project_and_key_limit(
    env: tuple[Stack, dict[str, str], Path],
) -> None:
    stack, paths, _ = env
    # test_schedule_starts_tick_sessions left project "ticker" deployed with t.py:tick.
    session, prints = _finish(stack, _session_of(stack, _fire(stack, paths["cross_project"])))
    assert prints == [
        'refused: start: project "ticker" not found',
        "own project child {'completed': True, 'value': None}",
    ], session
    ticker = stack.ak("session", "list", "-p", "ticker", "-j", check=True).stdout.splitlines()
    assert all(json.loads(s)["parent_session_id"] == "" for s in ticker)
    session, prints = _finish(stack, _session_of(stack, _fire(stack, paths["many_keys"])))
    assert session["state"] == "COMPLETED", session
    assert prints == [
        "64 refused: value: the project already has 64 values, the limit: "
        "delete some before adding new keys"
    ]
