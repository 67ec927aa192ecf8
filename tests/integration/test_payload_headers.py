"""NATS's message limit (``max_payload``) counts a message's headers with its data: a
message whose data is within it and whose headers take it over is refused by the server,
which closes the connection that sent it (``maximum payload exceeded``), while the client
checks the data alone. Every JetStream publish here carries headers (``Nats-Msg-Id``,
``traceparent``, ``Nats-Expected-Last-Subject-Sequence``): a session started with inputs
sized so (``ak session start`` by a token limited to one project: its job, the runner's
connection), or an event so (``ak event dispatch``: ingress's connection, again on each
of its tries), reset a service's NATS connection, for every session and request it
carried (a review of 2026-12-07's "sessions over the NATS limit refused")."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from akcore import bus, sessions, subjects, wire
from akcore.datakey import Keyring
from cryptography.fernet import Fernet
from nats.errors import MaxPayloadError
from nats.js.errors import NotFoundError

KEYS = Keyring([Fernet.generate_key()])


def _job(size: int) -> wire.Job:
    return wire.Job(
        session_id="ses_01m98z0000000000000000000a",
        project_id="prj_01m98z0000000000000000000a",
        deployment_id="dep_01m98z0000000000000000000a",
        build_id="bld_01m98z0000000000000000000a",
        entrypoint="h.py:main",
        is_durable=True,
        event_id=None,
        event_type=None,
        data={"x": "a" * size},
    )


class _Sizes:
    """A publisher that sends nothing: what each message would take, headers included."""

    max_payload = 0  # (publish_session checks nothing)

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> Any:
        self.sizes[subject.split(".")[1]] = len(payload)
        return {}


async def _still_connected(nc: Any) -> None:
    """The server read all ``nc`` sent (a message over its limit would have closed the
    connection before its answer) and the connection is the one it was."""
    await bus.flush(nc, timeout=2)
    assert nc.is_connected and nc.stats["reconnects"] == 0, nc.stats


async def test_a_publish_over_the_limit_with_its_headers_is_refused_unsent(
    nats_url: str,
) -> None:
    nc = await bus.connect(nats_url, "t")
    try:
        headers = {subjects.HDR_MSG_ID: "m" * 40}
        with pytest.raises(MaxPayloadError):
            await bus.publisher(nc).publish(
                "ak.events.p.e", b"a" * (nc.max_payload - 10), headers=headers, timeout=3
            )
        await _still_connected(nc)
    finally:
        await nc.close()


async def test_a_session_whose_job_is_over_the_limit_with_its_headers_is_refused(
    nats_url: str,
) -> None:
    nc = await bus.connect(nats_url, "t")
    try:
        await bus.ensure_streams(nc.jetstream())
        limit = nc.max_payload
        probe = _Sizes()
        await sessions.publish_session(probe, _job(1000), KEYS)  # type: ignore[arg-type]
        # Inputs that make the larger message's data 20 bytes under the limit.
        step = max(probe.sizes.values())
        size = 1000 + (limit - 20 - step) * 3 // 4  # (sealed inputs are base64 in the job)
        for _ in range(20):
            probe = _Sizes()
            await sessions.publish_session(probe, _job(size), KEYS)  # type: ignore[arg-type]
            over = max(probe.sizes.values()) - (limit - 20)
            if over == 0:
                break
            size -= max(1, over * 3 // 4) if over > 0 else min(-1, over * 3 // 4)
        assert max(probe.sizes.values()) <= limit
        with pytest.raises(MaxPayloadError):
            await sessions.publish_session(bus.publisher(nc), _job(size), KEYS)
        await _still_connected(nc)
        js, sid = nc.jetstream(), _job(0).session_id
        for stream, subject in (
            (subjects.STREAM_JOURNAL, subjects.journal_subject(sid)),
            (subjects.STREAM_JOBS, subjects.job_subject(_job(0).project_id, sid)),
        ):  # neither went: not a `created` without its job, nor a job without its record
            with pytest.raises(NotFoundError):
                await js.get_last_msg(stream, subject)
        # (Well within the limit, it goes.)
        small = dataclasses.replace(_job(10), session_id="ses_01m98z0000000000000000000b")
        await sessions.publish_session(bus.publisher(nc), small, KEYS)
    finally:
        await nc.close()


async def test_an_event_over_the_limit_with_its_headers_is_refused_as_too_large(
    nats_url: str,
) -> None:
    """``ak event dispatch`` of an event whose data fits and whose headers do not: it
    closed ingress's connection for good (every webhook then 503); and one over by its data
    was answered 503 "NATS is not available ... send it again later" (so every time)."""
    from ak_ingress.intake import store_event
    from akcore import eventdata, ids, timefmt
    from akcore.errors import InvalidArgument

    nc = await bus.connect(nats_url, "t")
    try:
        await bus.ensure_streams(nc.jetstream())
        event = wire.Event(
            ids.new_id("evt"), "prj_01m98z0000000000000000000a", "trg_01m98z0000000000000000000a",
            "post", {"pad": ""}, {}, timefmt.now_us(),
        )  # fmt: skip
        size = len(wire.encode(eventdata.sealed(event, KEYS)))
        pad = nc.max_payload - size - 30  # its data 20-some bytes within the limit
        event = dataclasses.replace(event, data={"pad": "x" * pad})
        assert len(wire.encode(eventdata.sealed(event, KEYS))) <= nc.max_payload
        for e in (event, dataclasses.replace(event, data={"pad": "x" * (pad + 100)})):
            with pytest.raises(InvalidArgument, match="over the NATS message limit"):
                await store_event(nc, e, KEYS)
        await _still_connected(nc)
    finally:
        await nc.close()
