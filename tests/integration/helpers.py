"""Small helpers for integration tests."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ak_store.api import StoreApi
from akcore import bus, ops, subjects, tokens, wire
from akcore.datakey import Keyring
from akcore.errors import NotFound
from cryptography.fernet import Fernet
from nats.aio.client import Client

T = TypeVar("T")

# The data keys of the store a test calls directly (the ``store`` fixture).
KEYS = Keyring([Fernet.generate_key()])


def call(api: StoreApi, name: str, args: dict[str, Any]) -> Any:
    """One operation as the store serves it: the request parsed into its type first."""
    return api.routes()[name](ops.get(name).parse(args))


MANIFEST = """\
version: v1
project:
  name: {name}
  vars:
    - name: USER
      value: Garfield
  triggers:
    - name: events
      event_type: post
      call: simple.py:greet
      webhook: {{}}
"""
# A sync webhook's project (its requests wait for the session's outcome).
SYNC = """\
version: v1
project:
  name: {name}
  triggers:
    - name: events
      call: simple.py:greet
      webhook: {{}}
      is_sync: true
"""


def short_job_ack_wait(monkeypatch: Any, seconds: float = 2.0) -> None:
    """Jobs left alone by their attempt come back within ``seconds`` (every lane's consumer
    made with that ack wait)."""
    consumers = dict(bus.CONSUMERS)
    for name in subjects.RUNNER_CONSUMERS:
        stream, config = consumers[name]
        consumers[name] = (stream, dataclasses.replace(config, ack_wait=seconds))
    monkeypatch.setattr(bus, "CONSUMERS", consumers)


async def jobs_delivered(js: Any) -> int:
    """Jobs delivered to runners so far (deliveries again included), over every lane."""
    total = 0
    for name in subjects.RUNNER_CONSUMERS:
        info = await js.consumer_info(subjects.STREAM_JOBS, name)
        total += info.delivered.consumer_seq if info.delivered else 0
    return total


async def api_headers(nc: Client) -> dict[str, str]:
    """Headers of an `/api` call with a new API token (kept by the store under its digest)."""
    token = tokens.new_token()
    await bus.store_call(nc, "token.add", {"digest": tokens.digest(token), "name": "test"})
    return {"Authorization": f"Bearer {token}"}


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 30) -> T:
    """Polls ``probe`` until it gives a true value: a state waited on, never a chosen time
    (``timeout`` only bounds a test that fails, so it is generous: a CI machine running
    two test processes beside nats-servers and stacks is slow)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def deploy(
    nc: Client, name: str, files: dict[str, bytes], manifest: str = MANIFEST
) -> dict[str, Any]:
    """Applies the manifest above (or ``manifest``: a trigger named ``events`` in project
    ``{name}``), builds ``files``, deploys and activates; returns ids."""
    res = await bus.store_call(nc, "manifest.apply", {"text": manifest.format(name=name)})
    pid = res["project_id"]
    bid = await bus.store_call(nc, "build.create", {"project": pid, "files": files})
    did = await bus.store_call(nc, "deployment.create", {"project": pid, "build_id": bid})
    await bus.store_call(nc, "deployment.activate", {"deployment_id": did})
    trig = await bus.store_call(nc, "trigger.get", {"trigger": "events", "project": pid})
    return {
        "project_id": pid,
        "build_id": bid,
        "deployment_id": did,
        "trigger": trig,
        "lines": res["lines"],
    }


async def journal(nc: Client, session_id: str) -> list[wire.JournalRecord]:
    """All journal records of a session so far (ordered consumer, read to the end)."""
    js = nc.jetstream()
    sub = await js.subscribe(subjects.journal_subject(session_id), ordered_consumer=True)
    out: list[wire.JournalRecord] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                return out
            out.append(wire.decode(wire.JournalRecord, msg.data))
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


async def session_state(nc: Client, sid: str) -> str:
    """The session's state as the store has it; "" while the store has not seen it."""
    try:
        return str((await bus.store_call(nc, "session.get", {"session": sid}))["state"])
    except NotFound:
        return ""
