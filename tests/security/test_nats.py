"""NATS with accounts: with `ak up`'s embedded server, a client without credentials gets
nowhere, and each service's user can do only what that service does. Each attack here
succeeds on a server without the users (or with a user allowed more than it needs)."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from akcore import bus, subjects
from nats.aio.client import Client

from tests.helpers import Stack, free_port, start_stack, write_project

MANIFEST = """\
version: v1
project:
  name: natsec
  vars:
    - name: TOKEN
      value: natsec-s3cret-q81
      secret: true
  triggers:
    - name: hook
      call: h.py:on_hook
      webhook: {}
"""

# A handler that was handed the NATS address (it is not given one) tries it.
CODE = """\
import asyncio
import gc

import nats


async def _try(url):
    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=3)
    except Exception as e:
        return f"refused: {e!r}"
    await nc.close()
    return "connected"


def on_hook(event):
    print("nats:", asyncio.run(_try(event.data.body.json["url"])))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The NATS port is let through the handlers' network fence (tests/security/test_netfence
    # shows a handler kept off this host's ports): here NATS itself must refuse one.
    port = str(free_port())
    s = start_stack(
        tmp_path_factory.mktemp("natsec"), {"AK_NATS__PORT": port, "AK_RUNNER__HOST_PORTS": port}
    )
    yield s
    s.stop()


def _nats_url(stack: Stack) -> str:
    found = re.search(r"NATS: +(nats://\S+)", stack.output())
    assert found, stack.output()
    return found[1]


def _data(stack: Stack) -> Path:
    return Path(stack.env["XDG_DATA_HOME"]) / "autokitteh"


def _password(stack: Stack, service: str) -> str:
    return (_data(stack) / "nats-users" / f"{service}.password").read_text().strip()


class Attacker:
    """A connection as one service's user that records what the server refused."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc, self.errors = nc, errors

    @classmethod
    async def connect(cls, stack: Stack, service: str) -> Attacker:
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e).lower())

        nc = await nats.connect(
            _nats_url(stack),
            name="attacker",
            user=service,
            password=_password(stack, service),
            inbox_prefix=f"_INBOX.{service}",
            error_cb=on_error,
            allow_reconnect=False,
        )
        return cls(nc, errors)

    async def refused(self, what: str, subject: str) -> bool:
        """Whether the server refused ``what`` ("publish" or "subscription") on ``subject``
        (it says so before it answers the flush that follows)."""
        await bus.flush(self.nc, timeout=5)
        for _ in range(50):
            said = f'permissions violation for {what} to "{subject.lower()}"'
            if any(said in e for e in self.errors):
                return True
            await asyncio.sleep(0.02)  # the error callback runs as a task of its own
        return False

    async def request(self, subject: str, payload: bytes = b"{}") -> bytes | None:
        """The answer to a request, or None when there was none."""
        try:
            return (await self.nc.request(subject, payload, timeout=1)).data
        except nats.errors.TimeoutError:
            return None


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def session(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One session that ran (a journal, an event, a secret var): what attackers go for."""
    project = write_project(
        tmp_path_factory.mktemp("natsec-project"), {"autokitteh.yaml": MANIFEST, "h.py": CODE}
    )
    _, path = stack.deploy(project)
    status, event_id = stack.post_json(path, {"url": _nats_url(stack)})
    assert status == 202
    sid = stack.session_of("natsec", event_id)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    return sid


def test_a_handler_given_the_nats_address_is_refused(stack: Stack, session: str) -> None:
    prints = stack.ak("session", "prints", session, "-n", check=True).stdout
    assert "nats: refused:" in prints and "Authorization Violation" in prints, prints
    assert "connected" not in prints


def test_normal_work_needs_nothing_a_user_is_not_allowed(stack: Stack, session: str) -> None:
    """The allow-lists are complete: a session's whole path asked for nothing refused."""
    log = (_data(stack) / "nats-server.log").read_text()
    assert "Violation" not in log, log
    for service in subjects.SERVICES:  # and no password is written to a log
        password = _password(stack, service)
        assert password not in stack.output() and password not in log


def test_no_or_wrong_credentials_are_refused(stack: Stack) -> None:
    async def attempt(**auth: str) -> str:
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e))

        with pytest.raises(nats.errors.Error) as refused:
            await nats.connect(_nats_url(stack), allow_reconnect=False, error_cb=on_error, **auth)
        return " ".join([str(refused.value), *errors])

    with warnings.catch_warnings():  # nats-py leaves a refused connection's socket open
        warnings.simplefilter("ignore", ResourceWarning)
        anonymous = _run(attempt())
        wrong = _run(attempt(user="runner", password="guess"))
        gc.collect()
    assert "Authorization Violation" in anonymous  # type: ignore[operator]
    assert "Authorization Violation" in wrong  # type: ignore[operator]


def test_a_service_with_wrong_credentials_says_so_and_stops(stack: Stack) -> None:
    env = {
        **stack.env,
        "AK_NATS_URL": _nats_url(stack),
        "AK_NATS__USER": "runner",
        "AK_NATS__PASSWORD": "guess",
    }
    res = subprocess.run(
        [sys.executable, "-m", "ak_runner"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "refused the credentials of user 'runner' (ak-runner)" in res.stderr, res.stderr
    assert "AK_NATS__PASSWORD" in res.stderr and "Traceback" not in res.stderr
    del env["AK_NATS__USER"], env["AK_NATS__PASSWORD"]
    res = subprocess.run(
        [sys.executable, "-m", "ak_store"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "refused a connection without credentials (ak-store)" in res.stderr, res.stderr


JOURNAL_GET = f"$JS.API.STREAM.MSG.GET.{subjects.STREAM_JOURNAL}"
JOURNAL_READ = f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_JOURNAL}"
# (service, what is refused, subject): each a thing that service's user must not do.
ATTACKS = [
    # ingress faces the internet: it publishes events but reads no journal, no secret
    ("ingress", "publish", JOURNAL_GET),
    ("ingress", "publish", JOURNAL_READ),
    ("ingress", "subscription", subjects.JOURNAL_ALL),
    ("ingress", "publish", subjects.store_subject("session.env")),
    ("ingress", "publish", f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_JOBS}.runner"),
    ("ingress", "publish", f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_JOBS}.runner-0"),
    ("ingress", "subscription", "_INBOX.>"),  # the replies sent to the other services
    ("ingress", "subscription", subjects.STORE_ALL),  # answering as the store
    # nor writes a session's journal, job or inbox: a runner starts and stops sessions
    ("ingress", "publish", "ak.journal.ses_x"),
    ("ingress", "publish", "ak.jobs.ses_x"),
    ("ingress", "publish", "ak.inbox.ses_x"),
    # the runner is closest to user code: it cannot destroy or change what it uses
    ("runner", "publish", f"$JS.API.STREAM.PURGE.{subjects.STREAM_JOURNAL}"),
    ("runner", "publish", f"$JS.API.STREAM.PURGE.{subjects.STREAM_EVENTS}"),
    ("runner", "publish", f"$JS.API.STREAM.DELETE.{subjects.STREAM_JOURNAL}"),
    ("runner", "publish", f"$JS.API.STREAM.UPDATE.{subjects.STREAM_JOURNAL}"),
    ("runner", "publish", f"$JS.API.CONSUMER.DELETE.{subjects.STREAM_JOURNAL}.store-journal"),
    ("runner", "publish", f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_JOURNAL}.store-journal"),
    ("runner", "publish", f"$JS.API.CONSUMER.DELETE.{subjects.STREAM_JOBS}.runner"),
    ("runner", "publish", f"$JS.API.CONSUMER.DELETE.{subjects.STREAM_JOBS}.runner-3"),
    ("runner", "publish", f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_JOBS}.runner-3"),
    ("runner", "publish", f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_EVENTS}.dispatcher"),
    ("runner", "publish", subjects.store_subject("var.get")),
    ("runner", "publish", subjects.store_subject("manifest.apply")),
    ("runner", "publish", "ak.events.prj_x.evt_x"),
    ("runner", "subscription", "_INBOX.ingress.>"),
    ("runner", "subscription", subjects.STORE_ALL),
    ("runner", "subscription", subjects.SPANS),
    # the dispatcher starts sessions but does not run them or read their secrets
    ("dispatcher", "publish", f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_JOBS}.runner"),
    ("dispatcher", "publish", subjects.store_subject("session.env")),
    ("dispatcher", "publish", JOURNAL_GET),
    # nor makes or changes a consumer (a push consumer would deliver past its permissions)
    (
        "dispatcher",
        "publish",
        f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_DEFERRED}.deferred-x.ak.deferred.x",
    ),
    # the store keeps the records but starts no session
    ("store", "publish", "ak.jobs.ses_x"),
    ("store", "publish", subjects.store_subject("var.get")),
]


@pytest.mark.parametrize(("service", "what", "subject"), ATTACKS)
def test_a_service_user_cannot(
    stack: Stack, session: str, service: str, what: str, subject: str
) -> None:
    async def attack() -> None:
        a = await Attacker.connect(stack, service)
        if what == "subscription":
            await a.nc.subscribe(subject)
        else:
            body = json.dumps({"names": ["TOKEN"], "reveal": True, "project": "natsec"})
            assert await a.request(subject, body.encode()) is None
        assert await a.refused(what, subject), a.errors
        await a.nc.close()

    _run(attack())


def test_an_ephemeral_consumer_cannot_take_over_the_stores(stack: Stack, session: str) -> None:
    """The runner may read journals through consumers of its own, but a request for one
    named as the store's durable consumer changes nothing."""

    async def attack(named: str) -> tuple[bytes | None, float]:
        a = await Attacker.connect(stack, "runner")
        config = {named: "store-journal", "ack_policy": "none", "ack_wait": 1}
        body = json.dumps({"stream_name": subjects.STREAM_JOURNAL, "config": config})
        answer = await a.request(JOURNAL_READ, body.encode())
        js = a.nc.jetstream()
        info = await js.consumer_info(subjects.STREAM_JOURNAL, "store-journal")
        await a.nc.close()
        return answer, info.config.ack_wait or 0

    for named in ("durable_name", "name"):
        answer, ack_wait = _run(attack(named))  # type: ignore[misc]
        assert answer is not None and b'"error"' in answer, answer
        assert ack_wait > 1


def test_nothing_was_lost_to_the_attacks(stack: Stack, session: str) -> None:
    """Runs last: the session's journal, event and prints are all still there."""
    prints = stack.ak("session", "prints", session, "-n", check=True).stdout
    assert "nats: refused:" in prints
    events = stack.ak("event", "list", "-p", "natsec", "-j", check=True).stdout
    assert len(events.splitlines()) == 1
