"""The planted-secret grep: a secret that passes through a handler (read with ``os.getenv``
in its body, given to an activity, printed, returned, raised) or that comes in a webhook's
credential header, query string or body (judged by a filter, delivered to a waiting
session) is nowhere at rest in plaintext or base64: not in the data home (SQLite,
JetStream's files, any file) nor in the service log. The session's owner still reads it
back (decrypted at read), the handler gets the request as sent, and a runner killed
mid-session replays from the sealed journal."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from ak_runner.inbox import Inbox
from ak_runner.syscalls import SyscallError, Syscalls
from akcore import bus, ids, subjects, wire
from akcore.datakey import Keyring
from akcore.sessions import created_record
from akcore.values import kv_key
from autokitteh import _values
from cryptography.fernet import Fernet

from tests.helpers import start_stack, write_project

PLANTED = "planted-TOKEN-q8z3v7k2"
BEARER = "hdr-bearer-w7m2x9"  # sent in webhook headers
SENT = "query-and-body-k5t9r3"  # sent in a webhook's query string and body
NOTED = "memo-note-p3x8d6"  # given to `ak event dispatch --memo` and `ak event save --memo`

MANIFEST = """\
version: v1
project:
  name: planted
  triggers:
    - name: hook
      call: h.py:on_hook
      webhook: {}
    - name: boom
      call: h.py:on_boom
      webhook: {}
    - name: hdr
      call: h.py:on_hdr
      webhook: {}
    - name: query
      call: h.py:on_query
      webhook: {}
      filter: data.url.query.token.startsWith("query-and-body")
    - name: feed
      webhook: {}
"""

# os.getenv is an activity (its result, the secret, is journaled); hashlib gets the secret
# as an argument; the print, a child's inputs and return value (in its parent's inbox), the
# return value and the error carry it too.
CODE = """\
import hashlib
import os

import autokitteh


def on_hook(event):
    token = os.getenv("TOKEN")
    digest = hashlib.sha256(token.encode()).hexdigest()
    print("token", token)
    autokitteh.start("h.py:on_child", data={"token": token}, memo={"token": token})
    return {"auth": "Bearer " + token, "digest": digest[:8]}


def on_child(event):
    print("child got it", event.data.token == os.getenv("TOKEN"))
    return "child saw " + event.data.token  # to its parent's inbox


def on_boom(event):
    raise ValueError("refused token " + os.getenv("TOKEN"))


def on_hdr(event):
    headers = event.data.headers
    for name in ("Authorization", "X-Api-Key", "Cookie"):
        digest = hashlib.sha256(headers[name].encode()).hexdigest()
        print(name, digest == "DIGEST", headers["Content-Type"])


def on_query(event):
    token = event.data.url.query.token
    print("query", hashlib.sha256(token.encode()).hexdigest() == "SENT_DIGEST")
    print("body", event.data.body.json["password"] == token)
    sub = autokitteh.subscribe("feed", 'data.body.json.password.startsWith("query")')
    print("subscribed")
    fed = autokitteh.next_event(sub, timeout=120)
    print("fed", fed.body.json["password"] == token)
"""


def encodings(secret: bytes) -> list[bytes]:
    """The secret raw and as it shows inside base64 text at each of the 3 alignments."""
    forms = [secret]
    for shift in range(3):
        text = base64.b64encode(b"\0" * shift + secret)
        start = -(-shift * 4 // 3)  # characters that mix in the padding before
        forms.append(text[start : len(text) - 4])  # and the last group, which may be partial
    return forms


def test_encodings_find_base64_at_any_offset() -> None:
    forms = [*encodings(PLANTED.encode()), *encodings(BEARER.encode())][1:]
    for prefix in (b"", b"a", b"ab", b"abc"):
        text = base64.b64encode(prefix + PLANTED.encode() + b"tail")
        assert any(f in text for f in forms), prefix


def test_planted_secret_is_nowhere_at_rest(tmp_path: Path) -> None:
    # The runner dies as the hashlib activity (step 2) is journaled: the next attempt
    # replays the sealed journal.
    faults = "crash journaled step=2 entry=h.py:on_hook"
    # (The killed runner's job comes back after 3 s rather than the default 15.)
    stack = start_stack(tmp_path, {"AK_TEST__FAULTS": faults, "AK_JOBS__ACK_WAIT": "3"})
    try:
        digest = hashlib.sha256(BEARER.encode()).hexdigest()
        code = CODE.replace("SENT_DIGEST", hashlib.sha256(SENT.encode()).hexdigest())
        code = code.replace("DIGEST", digest)
        proj = write_project(tmp_path / "p", {"autokitteh.yaml": MANIFEST, "h.py": code})
        paths = stack.deploy_paths(proj)
        stack.ak("var", "set", "--secret", "-p", "planted", "TOKEN", PLANTED, check=True)
        _, event_id = stack.post_json(paths["hook"], {})
        sid = stack.session_of("planted", event_id)
        session = stack.wait_session(sid, timeout=60)
        assert session["state"] == "COMPLETED", session
        # Its owner reads what the handler produced, decrypted.
        prints = stack.ak("session", "prints", sid, "-n", check=True).stdout
        assert prints == f"token {PLANTED}\n"
        log = stack.ak("session", "log", sid, "-j", check=True).stdout.splitlines()
        attempts = [
            r["state"]["running"]["attempt"]
            for r in map(json.loads, log)
            if "running" in r.get("state", {})
        ]
        assert attempts == [1, 2]  # the second attempt replayed the sealed journal
        child = stack.wait_session(_child_of(stack, sid))
        assert child["state"] == "COMPLETED", child
        assert child["inputs"] == {"token": PLANTED}  # shown to its owner, opened
        child_prints = stack.ak("session", "prints", child["session_id"], "-n").stdout
        assert child_prints == "child got it True\n"

        _, event_id = stack.post_json(paths["boom"], {})
        failed = stack.wait_session(stack.session_of("planted", event_id))
        assert failed["state"] == "ERROR"
        assert f"refused token {PLANTED}" in failed["error"]

        _credential_headers(stack, paths["hdr"])
        _query_and_body(stack, paths["query"], paths["feed"])
        _hand_made_memos(stack, tmp_path)
    finally:
        stack.stop()

    forms = [*encodings(PLANTED.encode()), *encodings(BEARER.encode())]
    forms += encodings(SENT.encode()) + encodings(NOTED.encode())
    at_rest = [f for f in Path(stack.env["XDG_DATA_HOME"]).rglob("*") if f.is_file()]
    leaks = [(str(f), form) for f in at_rest for form in forms if form in f.read_bytes()]
    assert leaks == []
    # Known, fixed by the worker sandbox part of issue 16: the handler's print is echoed to
    # the service log. Remove this exception when that lands.
    log = stack.log.read_bytes().replace(f"token {PLANTED}\n".encode(), b"")
    assert [form for form in forms if form in log] == []
    # The grep can fail: the session did run and the stores hold its records.
    db = Path(stack.env["XDG_DATA_HOME"]) / "autokitteh" / "autokitteh.sqlite"
    assert b"h.py:on_hook" in b"".join(f.read_bytes() for f in db.parent.glob("autokitteh.sqlite*"))


def _credential_headers(stack, path: str) -> None:  # type: ignore[no-untyped-def]
    """The handler gets the headers as sent (also when the event is dispatched again);
    `ak event get` masks them unless --reveal."""
    headers = {"Authorization": BEARER, "X-Api-Key": BEARER, "Cookie": BEARER}
    status, answer, _ = stack.request("POST", path, b"{}", {**headers, "Content-Type": "a/b"})
    assert status == 202
    event_id = answer["autokitteh-event-id"]
    expected = "Authorization True a/b\nX-Api-Key True a/b\nCookie True a/b\n"
    first = stack.wait_session(stack.session_of("planted", event_id))
    assert first["state"] == "COMPLETED", first
    assert stack.ak("session", "prints", first["session_id"], "-n").stdout == expected
    shown = json.loads(stack.ak("event", "get", event_id, "-j", check=True).stdout)
    got = shown["data"]["headers"]
    assert (got["Authorization"], got["X-Api-Key"], got["Cookie"]) == ("<secret>",) * 3
    assert got["Content-Type"] == "a/b"
    revealed = stack.ak("event", "get", event_id, "-j", "--reveal", check=True).stdout
    assert json.loads(revealed)["data"]["headers"]["Authorization"] == BEARER
    again = stack.ak("event", "redispatch", event_id, check=True).stdout.strip()
    second = stack.wait_session(stack.session_of("planted", again))
    assert second["state"] == "COMPLETED", second
    assert stack.ak("session", "prints", second["session_id"], "-n").stdout == expected


def _query_and_body(stack, query: str, feed: str) -> None:  # type: ignore[no-untyped-def]
    """A webhook's query string and body reach a filter (the dispatcher opens the event),
    the handler, and a session waiting for the next event; its owner sees them."""
    body = json.dumps({"password": SENT}).encode()
    status, answer, _ = stack.request("POST", f"{query}?token={SENT}", body)
    assert status == 202
    sid = stack.session_of("planted", answer["autokitteh-event-id"])
    stack.wait_output("subscribed", "session", "prints", sid, "-n")
    status, fed, _ = stack.request("POST", feed, body)
    assert status == 202
    session = stack.wait_session(sid, timeout=60)
    assert session["state"] == "COMPLETED", session
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout
    assert prints == "query True\nbody True\nsubscribed\nfed True\n"
    for event_id in (answer["autokitteh-event-id"], fed["autokitteh-event-id"]):
        shown = json.loads(stack.ak("event", "get", event_id, "-j", check=True).stdout)
        assert shown["data"]["body"]["json"] == {"password": SENT}  # to its owner, opened


def _hand_made_memos(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A memo given to a hand-made event, dispatched or only kept, is shown to its owner."""
    feed = next(t for t in stack.api("trigger.list", project="planted") if t["name"] == "feed")
    spec = tmp_path / "event.json"
    spec.write_text(json.dumps({"destination_id": feed["trigger_id"], "event_type": "noted"}))
    for verb in ("dispatch", "save"):
        made = stack.ak("event", verb, "-f", str(spec), "-m", f"note={NOTED}", "-j", check=True)
        event_id = json.loads(made.stdout)["event_id"]

        def shown(event_id: str = event_id) -> dict | None:  # type: ignore[type-arg]
            res = stack.ak("event", "get", event_id, "-j")  # (kept once the store has it)
            return json.loads(res.stdout) if res.returncode == 0 else None

        stack.wait_until(shown, f"the {verb}ed event kept")
        assert shown()["memo"] == {"note": NOTED}  # type: ignore[index]


def _child_of(stack, parent: str) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = stack.ak("session", "list", "-p", "planted", "-j", check=True).stdout
        for s in map(json.loads, out.splitlines()):
            if s["parent_session_id"] == parent:
                return str(s["session_id"])
        time.sleep(0.2)
    raise AssertionError(f"no child of {parent}")


def _job(session_id: str) -> wire.Job:
    return wire.Job(session_id, "prj_a", "dep_a", "bld_a", "h.py:f", True, None, None, {})


def _syscalls(nc: Any, session_id: str, keys: Keyring) -> Syscalls:
    job = _job(session_id)
    inbox = Inbox(nc.jetstream(), session_id, set(), lambda reason, failed: None)
    return Syscalls(nc, job, inbox, nc.jetstream(), keys)


async def test_a_signal_rests_sealed_in_the_inbox_of_its_session(nats_url: str) -> None:
    """A handler's signal payload (or a child's return value) waits in the receiving
    session's inbox, on disk, maybe long: sealed, it opens only for that session."""
    nc = await bus.connect(nats_url, "t")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js)
        keys = Keyring([Fernet.generate_key()])
        sender, target = ids.new_id("ses"), ids.new_id("ses")
        created = wire.encode(created_record(_job(target)))  # of the sender's project
        await js.publish(subjects.journal_subject(target), created)
        args = {"session_id": target, "name": "go"}
        await _syscalls(nc, sender, keys).call("signal", args, _values.dumps(PLANTED), 1)
        subject = subjects.inbox_subject(target)
        raw = await js.get_last_msg(subjects.STREAM_INBOX, subject)
        assert [f for f in encodings(PLANTED.encode()) if f in raw.data] == []
        wanted = {"names": ["go"], "timeout": 5}
        got, _ = await _syscalls(nc, target, keys).call("next_signal", wanted, b"", 1)
        assert _values.loads(got["payload"]) == PLANTED
        # Copied into another session's inbox, it does not open there.
        other = ids.new_id("ses")
        await js.publish(subjects.inbox_subject(other), raw.data)
        with pytest.raises(SyscallError, match="altered or moved"):
            await _syscalls(nc, other, keys).call("next_signal", wanted, b"", 1)
    finally:
        await nc.close()


async def test_a_stored_value_rests_sealed(nats_url: str) -> None:
    """``set_value`` keeps what a handler gives it in the KV bucket, sealed to its project
    and key; the project's sessions read it back."""
    nc = await bus.connect(nats_url, "t")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js)
        keys = Keyring([Fernet.generate_key()])
        calls = _syscalls(nc, ids.new_id("ses"), keys)
        await calls.call("value", {"key": "tok", "op": "set", "args": [PLANTED]}, b"", None)
        kv = await bus.values_bucket(js)
        raw = (await kv.get(kv_key("prj_a", "tok"))).value
        assert [f for f in encodings(PLANTED.encode()) if f in raw] == []
        got, _ = await calls.call("value", {"key": "tok", "op": "get"}, b"", None)
        assert got == PLANTED
        await kv.put(kv_key("prj_a", "moved"), raw)  # under another key it does not open
        with pytest.raises(SyscallError, match="altered or moved"):
            await calls.call("value", {"key": "moved", "op": "get"}, b"", None)
    finally:
        await nc.close()
