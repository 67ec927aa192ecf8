"""Sync webhook requests share one subscription per subject and each gets its own event's
dispatch report and first outcome."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from ak_ingress import sync
from ak_ingress.sync import SyncWaits, outcome_response
from akcore import bus, subjects, wire
from fastapi import Response

from tests.conftest import connect_as


async def test_each_request_gets_its_own_events_report_and_first_outcome(nats_url: str) -> None:
    # Ingress's own user: the subscriptions must be within its permissions.
    ingress = await connect_as(nats_url, "ingress")
    other = await bus.connect(nats_url, "dispatcher and runner")
    try:
        waits = SyncWaits(ingress)
        async with waits.wait("evt_a") as a, waits.wait("evt_b") as b:
            for event, value in (("evt_x", "nobody's"), ("evt_b", "b's"), ("evt_a", "a's")):
                report = {"sessions": [f"ses_{event}"], "signaled": 0}
                await other.publish(subjects.dispatched_subject(event), wire.pack(report))
                await other.publish(subjects.outcome_subject(event), wire.pack({"value": value}))
            await other.publish(subjects.outcome_subject("evt_a"), wire.pack({"value": "later"}))
            await bus.flush(other)
            assert (await asyncio.wait_for(a.dispatched, 10))["sessions"] == ["ses_evt_a"]
            assert await asyncio.wait_for(a.outcome, 10) == "a's"
            assert (await asyncio.wait_for(b.dispatched, 10))["sessions"] == ["ses_evt_b"]
            assert await asyncio.wait_for(b.outcome, 10) == "b's"
        # A request that ended is forgotten; the next one subscribes nothing new.
        subs = len(ingress._subs)
        async with waits.wait("evt_c") as c:
            await other.publish(subjects.outcome_subject("evt_c"), wire.pack({"value": "c's"}))
            assert await asyncio.wait_for(c.outcome, 10) == "c's"
        assert len(ingress._subs) == subs
        assert not waits._waits
    finally:
        await ingress.close()
        await other.close()


async def test_a_request_is_answered_once_every_session_ended_without_an_outcome(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the runner's and ingress's own users: a runner's word that a session ended ends
    the wait when every session of the report has ended and no waiting session was
    delivered the event (it could still answer); an outcome sent before its session's end
    always wins (one subscription hears both in the order sent)."""
    monkeypatch.setattr(sync, "TIMEOUT", 1.0)
    ingress = await connect_as(nats_url, "ingress")
    runner = await connect_as(nats_url, "runner")
    dispatcher = await connect_as(nats_url, "dispatcher")
    waits = SyncWaits(ingress)

    async def answer(event: str, report: dict[str, Any], sent: list[tuple[str, Any]]) -> Response:
        async with waits.wait(event) as wait:
            for subject, message in sent:  # a session's end may come before the report
                await runner.publish(subject, wire.pack(message))
            await bus.flush(runner)  # (its ends are routed before the report is sent)
            await dispatcher.publish(subjects.dispatched_subject(event), wire.pack(report))
            return await wait.response()

    def ended(event: str, sid: str, state: str = "ERROR") -> tuple[str, Any]:
        return subjects.ended_subject(event), {"session_id": sid, "state": state}

    try:
        one = {"sessions": ["ses_1"], "signaled": 0}
        resp = await answer("evt_a", one, [ended("evt_a", "ses_1")])
        assert (resp.status_code, resp.body.decode()) == (
            502,
            "Bad Gateway: session ses_1 ended (ERROR) without an outcome for this event; "
            "ak session log ses_1 shows what it did\n",
        )
        for n in range(20):  # the outcome, then at once its session's end
            event = f"evt_o{n}"
            outcome = (subjects.outcome_subject(event), {"session_id": "ses_1", "value": n})
            resp = await answer(event, one, [outcome, ended(event, "ses_1", "COMPLETED")])
            assert (resp.status_code, resp.body) == (200, f"{n}\n".encode())
        two = {"sessions": ["ses_1", "ses_2"], "signaled": 0}
        resp = await answer(
            "evt_b", two, [ended("evt_b", "ses_2", "STOPPED"), ended("evt_b", "ses_1")]
        )
        assert resp.body == (
            b"Bad Gateway: the event's sessions ended without an outcome for it: "
            b"ses_1 (ERROR), ses_2 (STOPPED)\n"
        )
        # Not enough to answer: one of two ended; ends of others' sessions or of another
        # event; what is not an end; a session delivered the event may still answer it.
        for event, report, sent in (
            ("evt_c", two, [ended("evt_c", "ses_1")]),
            ("evt_d", one, [ended("evt_d", "ses_9"), ended("evt_x", "ses_1")]),
            ("evt_e", one, [(subjects.ended_subject("evt_e"), m) for m in _not_ends()]),
            ("evt_f", {"sessions": ["ses_1"], "signaled": 1}, [ended("evt_f", "ses_1")]),
        ):
            resp = await answer(event, report, sent)
            assert (resp.status_code, resp.body) == (504, b"Gateway Timeout\n"), event
    finally:
        for nc in (ingress, runner, dispatcher):
            await nc.close()


def _not_ends() -> list[Any]:
    return [
        {"session_id": "ses_1", "state": "RUNNING"},
        {"session_id": "ses_1"},
        {"session_id": 1, "state": "ERROR"},
        ["ses_1", "ERROR"],
        "ses_1",
    ]


def _framing(resp: Response) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in resp.raw_headers if k in (b"content-length", b"transfer-encoding")]


def test_an_http_outcome_becomes_its_response() -> None:
    resp = outcome_response(
        {"status_code": 299, "json": {"cat": "meow"}, "headers": {"X-Kitteh": "yes"}}
    )
    assert (resp.status_code, resp.body) == (299, b'{"cat": "meow"}\n')
    assert resp.headers["x-kitteh"] == "yes" and resp.headers["content-type"] == "application/json"
    resp = outcome_response({"status_code": 0, "body": "plain", "headers": {"content-type": "a/b"}})
    assert (resp.status_code, resp.body) == (200, b"plain")
    assert resp.headers.getlist("content-type") == ["a/b"]  # the handler's alone
    resp = outcome_response({"status_code": 201, "headers": {"X-Name": "caf\u00e9"}})
    assert resp.raw_headers[0] == (b"x-name", "caf\u00e9".encode())  # its UTF-8 bytes
    assert outcome_response(["any", "value"]).body == b'["any", "value"]\n'
    # Bytes that are not text come in base64 (``http_outcome`` with bytes) and go as they are.
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    resp = outcome_response(
        {
            "status_code": 200,
            "body": None,
            "body_base64": base64.b64encode(png).decode(),
            "headers": {"Content-Type": "image/png"},
        }
    )
    assert (resp.status_code, resp.body, resp.headers["content-type"]) == (200, png, "image/png")


def test_an_outcome_cannot_frame_the_response_itself() -> None:
    """Its Content-Length or Transfer-Encoding beside the server's could make a proxy in
    front read the body as a second response: the server frames every response."""
    smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
    resp = outcome_response(
        {
            "status_code": 200,
            "body": smuggled,
            "headers": {
                "Content-Length": "0",
                "Transfer-Encoding": "chunked",
                "Connection": "upgrade",
                "Upgrade": "h2c",
            },
        }
    )
    assert resp.status_code == 200 and resp.body == smuggled.encode()
    assert _framing(resp) == [(b"content-length", str(len(smuggled)).encode())]
    assert b"connection" not in dict(resp.raw_headers) and b"upgrade" not in dict(resp.raw_headers)
    for status, framing in ((204, []), (205, [(b"content-length", b"0")]), (304, [])):
        resp = outcome_response({"status_code": status, "body": smuggled})
        assert (resp.status_code, resp.body, _framing(resp)) == (status, b"", framing)
    resp = outcome_response(
        {"status_code": 200.0, "headers": {"Date": "x", "Server": "y", "X-A": "1", "x-a": "2"}}
    )
    assert resp.status_code == 200
    assert [(k, v) for k, v in resp.raw_headers if k in (b"date", b"server", b"x-a")] == [
        (b"x-a", b"2")  # the server's own Date and Server are uvicorn's; one X-A, the last
    ]


@pytest.mark.parametrize(
    ("outcome", "why"),
    [
        ({"status_code": 101}, "status code 101 (give 200-599)"),
        ({"status_code": 600}, "status code 600 (give 200-599)"),
        ({"status_code": "teapot"}, "status code 'teapot' (give 200-599)"),
        ({"status_code": True}, "status code True (give 200-599)"),
        (
            {"status_code": 200, "headers": {"X-A": "1\r\nSet-Cookie: x=1"}},
            "header X-A's value has a line break",
        ),
        ({"status_code": 200, "headers": {"X A": "1"}}, "header name 'X A' is not a valid HTTP"),
        ({"status_code": 200, "headers": {"": "1"}}, "header name '' is not a valid HTTP"),
        ({"status_code": 200, "headers": ["X-A"]}, "headers must be a dict of names to values"),
        ({"status_code": 200, "json": {"b": b"bytes"}}, "the body cannot be sent as JSON"),
        ({"status_code": 200.9}, "status code 200.9 (give 200-599)"),
        ({"status_code": 200, "body_base64": "not base64!"}, "body_base64 'not base64!' is not"),
        ({"status_code": 200, "body_base64": [1]}, "body_base64 must be text, not list"),
        ({"status_code": 200, "headers": {"X-A": ["a", "b"]}}, "header X-A's value is list"),
        ({"status_code": 200, "headers": {"X-A": None}}, "header X-A's value is NoneType"),
        ({"status_code": 200, "headers": {f"X-{i}": "v" for i in range(101)}}, "101 headers"),
        ({"status_code": 200, "headers": {"X-A": "v" * 70_000}}, "the headers take more than"),
        (
            {"status_code": 200, "headers": {"set-cookie": " ak_ui_token = x; Path=/ui"}},
            "header Set-Cookie sets 'ak_ui_token', a cookie of this server's web UI",
        ),
    ],
)
def test_an_outcome_that_is_no_valid_response_is_a_502_saying_why(
    outcome: dict[str, object], why: str
) -> None:
    resp = outcome_response(outcome)
    assert resp.status_code == 502
    assert resp.body.decode().startswith(
        f"The handler's outcome is not a valid HTTP response: {why}"
    ), resp.body
