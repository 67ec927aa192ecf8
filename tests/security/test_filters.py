"""Filters that would take the machine: a filter that builds gigabytes in one call, or runs
its evaluator out of memory, fails with a note and holds nobody up; a filter too big to parse
cheaply is refused where it enters (a manifest, a trigger, ``autokitteh.subscribe``).

The attacks of an adversarial review (2026-12): a 20 KB webhook body made one filter's
evaluator take 423 MB (150 KB would have taken 22 GB); three subscribes with 60 KB filters
held a runner's event loop 4 s each and grew it by 680 MB for good; a manifest with a 100 KB
filter took the store 6-8 s and 370 MB each time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from akcore import wire

from tests.helpers import Stack, start_stack, write_project

BUDGET_MS = 5000  # (so that the memory limit, not the CPU budget, stops the greedy filter)
MEMORY_MB = 256
PROGRAM = """\
def on_event(event):
    print("got", event.event_id)
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("filters")
    s = start_stack(
        home,
        {
            "AK_DISPATCHER__FILTER_BUDGET_MS": str(BUDGET_MS),
            "AK_DISPATCHER__EVALUATOR_MEMORY_MB": str(MEMORY_MB),
        },
    )
    yield s
    s.stop()


def _note(stack: Stack, event_id: str) -> str:
    """The dispatch note of an event (waits for it)."""
    stack.wait_until(lambda: (stack.event(event_id) or {}).get("notes"), f"{event_id}'s note")
    (note,) = (stack.event(event_id) or {})["notes"]
    return str(note["note"])


HUNGRY = """\
version: v1
project:
  name: hungry
  triggers:
    - name: quadratic
      call: program.py:on_event
      webhook: {}
      filter: 'data.body.text.replace("", data.body.text).size() == 0'
    - name: greedy
      call: program.py:on_event
      webhook: {}
      filter: "data.body.json.items.map(x, data.body.json.s + data.body.json.s).size() == 0"
    - name: light
      call: program.py:on_event
      webhook: {}
      filter: "data.method == 'POST'"
"""


def test_a_filter_that_would_take_gigabytes_fails_and_events_go_on(
    stack: Stack, tmp_path: Any
) -> None:
    project = write_project(tmp_path / "hungry", {"autokitteh.yaml": HUNGRY, "program.py": PROGRAM})
    paths = stack.deploy_paths(project)
    dispatchers = stack.pids("dispatcher")
    # 20 KB with itself between each two characters: 400 million characters in one call.
    status, head, _ = stack.request("POST", paths["quadratic"], b"x" * 20_000)
    assert status == 202
    quadratic = head["autokitteh-event-id"]
    assert _note(stack, quadratic) == (
        "trigger quadratic: filter ran over its size limit: replace() would make 400040000 "
        "characters, more than the 1048576 a filter may build; counted as no match"
    )
    # 800 KB strings, each within that limit, a thousand times: over the evaluator's memory.
    status, greedy = stack.post_json(paths["greedy"], {"s": "y" * 400_000, "items": [0] * 1000})
    assert status == 202
    assert _note(stack, greedy) == (
        f"trigger greedy: filter ran over the evaluator's memory limit of {MEMORY_MB} MiB "
        "(AK_DISPATCHER__EVALUATOR_MEMORY_MB); counted as no match"
    )
    for event_id in (quadratic, greedy):
        out = stack.ak("session", "list", "-p", "hungry", "--event-id", event_id, "-j").stdout
        assert out.strip() == ""
    # Filters are judged as before, by the same dispatcher.
    status, light = stack.post_json(paths["light"], {"n": 1})
    assert stack.wait_session(stack.session_of("hungry", light))["state"] == "COMPLETED"
    assert stack.pids("dispatcher") == dispatchers


WIDE = "size([" + ",".join(["0"] * 1000) + "]) > 0"  # 2,011 characters, 2,006 tokens
TOO_MANY = (
    "invalid filter: it has 2006 tokens (names, literals, operators and brackets), over the "
    "limit of 500: filter on a few fields and check the rest in the handler"
)
SUBSCRIBER = f"""\
import autokitteh

WIDE = {WIDE!r}


def on_event(event):
    for flt in (WIDE, "x" * 60_000):
        try:
            autokitteh.subscribe("source", flt)
            print("subscribed")
        except autokitteh.AutoKittehError as e:
            print("refused:", e)
    sub = autokitteh.subscribe("source", "data.method == 'POST'")
    print("then subscribed", bool(sub))
"""


def test_subscribe_refuses_a_filter_too_big(stack: Stack, tmp_path: Any) -> None:
    manifest = (
        "version: v1\nproject:\n  name: subscriber\n  triggers:\n"
        "    - name: go\n      call: program.py:on_event\n      webhook: {}\n"
        "    - name: source\n      webhook: {}\n"
    )
    project = write_project(
        tmp_path / "subscriber", {"autokitteh.yaml": manifest, "program.py": SUBSCRIBER}
    )
    paths = stack.deploy_paths(project)
    sid = stack.session_of("subscriber", stack.post_json(paths["go"], {})[1])
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    assert stack.ak("session", "prints", sid, "-n").stdout.splitlines() == [
        f"refused: subscribe: {TOO_MANY}",
        "refused: subscribe: invalid filter: it is 60000 characters long, over the limit of "
        "4096: filter on a few fields and check the rest in the handler",
        "then subscribed True",
    ]
    # The runner goes on with other sessions.
    again = stack.session_of("subscriber", stack.post_json(paths["go"], {})[1])
    assert stack.wait_session(again)["state"] == "COMPLETED"


def test_a_filter_too_big_is_refused_where_it_is_saved(stack: Stack, tmp_path: Any) -> None:
    manifest = (
        "version: v1\nproject:\n  name: too_big\n  triggers:\n"
        f"    - name: t\n      call: program.py:on_event\n      webhook: {{}}\n"
        f"      filter: '{WIDE}'\n"
    )
    project = write_project(
        tmp_path / "too_big", {"autokitteh.yaml": manifest, "program.py": PROGRAM}
    )
    res = stack.ak("deploy", "--manifest", str(project / "autokitteh.yaml"))
    assert res.returncode == 40
    assert f"project.triggers[0].filter: {TOO_MANY}" in res.stderr
    assert stack.ak("project", "get", "too_big").returncode == 44  # nothing was created
    # The store checks too, whatever the client.
    text = (project / "autokitteh.yaml").read_text()
    body = wire.encode(wire.StoreRequest({"text": text}))
    _, _, raw = stack.request("POST", "/api/manifest.plan", body, stack.auth())
    reply = wire.decode(wire.StoreReply, raw)
    assert (reply.ok, reply.error_kind) == (False, "invalid_argument")
    assert f"project.triggers[0].filter: {TOO_MANY}" in reply.error
    stack.ak("project", "create", "-n", "too_big", check=True)
    res = stack.ak("trigger", "create", "-n", "t", "-p", "too_big", "-w", "-f", WIDE)
    assert res.returncode != 0 and TOO_MANY in res.stderr
    res = stack.ak("event", "verify-filter", WIDE)
    assert (res.returncode, res.stderr) == (1, f"Error: verify filter: {TOO_MANY}\n")
