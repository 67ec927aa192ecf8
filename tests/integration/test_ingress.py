"""Ingress: webhook requests become acknowledged events; the API forwards to the store."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from ak_ingress import intake
from ak_ingress.app import create_app
from ak_ingress.throttle import WebhookBytes
from ak_store.service import run as run_store
from akcore import bus, eventdata, subjects, wire
from akcore.config import HttpLimits, Settings
from akcore.secrets import load_keyring
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from tests.helpers import frozen

from .conftest import running
from .helpers import SYNC, api_headers, deploy, eventually


@asynccontextmanager
async def _ingress(
    settings: Settings, limits: HttpLimits | None = None
) -> AsyncIterator[tuple[Client, dict[str, Any], httpx.AsyncClient]]:
    """A store, project p deployed with one webhook trigger, and ingress's app in this
    process: a NATS connection, the deployment and an HTTP client of the app."""
    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "ingress-test")
        try:
            d = await deploy(nc, "p", {"simple.py": b""})
            transport = httpx.ASGITransport(app=create_app(nc, limits=limits))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield nc, d, http
        finally:
            await nc.close()


async def test_webhook_to_event(settings: Settings) -> None:
    async with _ingress(settings) as (nc, d, http):
        js = nc.jetstream()
        slug = d["trigger"]["webhook_slug"]
        auth = await api_headers(nc)
        r = await http.post(
            f"/webhooks/{slug}/sub?q=1",
            content=b'{"a": 1}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 202 and r.content == b""
        eid = r.headers["AutoKitteh-Event-ID"]
        assert r.headers["Cache-Control"] == "no-cache"
        msg = await js.get_last_msg(
            subjects.STREAM_EVENTS, subjects.event_subject(d["project_id"], eid)
        )
        ev = wire.decode(wire.Event, msg.data or b"")
        assert ev.event_type == "post" and ev.destination_id == d["trigger"]["trigger_id"]
        # Its data rests sealed (the query string and body included), bound to this event.
        assert ev.data == {} and b"sub?q=1" not in (msg.data or b"")
        data = eventdata.data_of(ev, load_keyring())
        assert data["url"] == {
            "path": f"/webhooks/{slug}/sub",
            "path_suffix": "sub",
            "query": {"q": "1"},
        }
        assert data["raw_url"] == f"/webhooks/{slug}/sub?q=1"
        assert data["body"]["json"] == {"a": 1}

        assert (await http.get("/webhooks/aaaaaaaaaaaaaaaaaaaaaaaaaa")).status_code == 404
        big = await http.post(f"/webhooks/{slug}", content=b"x" * (512 * 1024 + 1))
        assert big.status_code == 413
        # The CLI's API: msgpack in, msgpack out, status from the error kind.
        api = await http.post(
            "/api/project.get",
            content=wire.encode(wire.StoreRequest({"project": "zzz"})),
            headers=auth,
        )
        assert api.status_code == 404
        assert wire.decode(wire.StoreReply, api.content).error == 'project "zzz" not found'
        ok = await http.post(
            "/api/project.get",
            content=wire.encode(wire.StoreRequest({"project": "p"})),
            headers=auth,
        )
        assert wire.decode(wire.StoreReply, ok.content).result["project_id"] == d["project_id"]
        # Dispatcher and runner are not running here, so the stack is not ready.
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and "dispatcher" in ready.text


async def test_a_projects_webhooks_over_their_bytes_a_second_get_429_and_others_do_not(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AK_HTTP__WEBHOOK_PROJECT_MB: a flood of large bodies to one project's public
    webhook held up every project's sessions (one event queue); now the requests past
    the project's budget are refused before their events are stored, and another
    project's webhooks are not."""
    now = [1000.0]
    monkeypatch.setattr(WebhookBytes, "clock", staticmethod(lambda: now[0]))
    async with _ingress(settings, HttpLimits(webhook_project_mb=1)) as (nc, d, http):
        other = await deploy(nc, "q", {"simple.py": b""})
        body = b"x" * (512 * 1024)  # 0.5 MiB, twice (as bytes and as text), and 1 KiB for
        codes = [  # the request: 4 fit in 4 MiB (the 4th let in on its bytes alone)
            (await http.post(f"/webhooks/{d['trigger']['webhook_slug']}", content=body))
            for _ in range(5)
        ]
        assert [r.status_code for r in codes] == [202] * 4 + [429]
        refused = codes[-1]
        assert "AutoKitteh-Event-ID" not in refused.headers  # no event was stored
        assert refused.headers["Retry-After"] == "1"
        assert refused.text == (
            "Too Many Requests: this project's webhooks may bring 1 MiB a second into this "
            "server (AK_HTTP__WEBHOOK_PROJECT_MB), and more came; try again in 1 s\n"
        )
        r = await http.post(f"/webhooks/{other['trigger']['webhook_slug']}", content=body)
        assert r.status_code == 202  # another project's budget is its own
        now[0] += 1.0  # a second later: one more
        r = await http.post(f"/webhooks/{d['trigger']['webhook_slug']}", content=body)
        assert r.status_code == 202
        now[0] += 4.0  # full again: bytes that are no text are carried once, 7 fit
        binary = b"\xff" * (512 * 1024)
        hook = f"/webhooks/{d['trigger']['webhook_slug']}"
        codes = [(await http.post(hook, content=binary)) for _ in range(8)]
        assert [r.status_code for r in codes] == [202] * 7 + [429]


async def test_kept_webhook_lookups_are_forgotten_when_the_store_changes(
    settings: Settings,
) -> None:
    """Ingress keeps webhook lookups; a deactivation is still seen by the very next request."""
    from ak_ingress.lookups import WebhookLookups

    async with running(run_store, settings, "store"):
        nc = await bus.connect(settings.nats_url, "ingress-test")
        d = await deploy(nc, "p", {"simple.py": b""})
        lookups = WebhookLookups(nc, ttl=3600)
        await lookups.watch()
        transport = httpx.ASGITransport(app=create_app(nc, lookups=lookups))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            hook = f"/webhooks/{d['trigger']['webhook_slug']}"
            assert (await http.post(hook, content=b"1")).status_code == 202
            assert (await http.post(hook, content=b"2")).status_code == 202  # from memory
            await bus.store_call(nc, "deployment.deactivate", {"deployment_id": d["deployment_id"]})
            assert (await http.post(hook, content=b"3")).status_code == 404
            await bus.store_call(nc, "deployment.activate", {"deployment_id": d["deployment_id"]})
            assert (await http.post(hook, content=b"4")).status_code == 202
        await nc.close()


async def test_an_event_not_acknowledged_in_time_is_a_504_that_names_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """JetStream frozen (SIGSTOP) while a webhook's event is sent: no answer in time is not
    a refusal (the event sits in the server's socket and is stored once it runs again), so
    ingress says so (504, the event's id) instead of a 503 that reads as not stored."""
    monkeypatch.setattr(intake, "PUBLISH_WITHIN", 1.0)
    async with _ingress(settings) as (nc, d, http):
        js = nc.jetstream()
        slug = d["trigger"]["webhook_slug"]
        assert (await http.post(f"/webhooks/{slug}", content=b"1")).status_code == 202
        with frozen(_nats_server_of(tmp_path)):
            r = await http.post(f"/webhooks/{slug}", content=b"2")
        assert r.status_code == 504, r.text
        assert "may still be stored" in r.text
        eid = r.headers["AutoKitteh-Event-ID"]
        await eventually(lambda: _stored(js, d["project_id"], eid))  # as the 504 said it might be


async def test_a_hand_made_event_not_acknowledged_in_time_says_it_may_be_stored(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ak event dispatch` as a webhook: JetStream frozen as the event is published (not
    before: the API's token and the destination are looked up first) is told apart from a
    refusal, naming the event to look for; the event is stored once NATS runs again."""
    monkeypatch.setattr(intake, "PUBLISH_WITHIN", 1.0)
    publish_within = bus.Publisher.publish_within
    server = _nats_server_of(tmp_path)

    async def frozen_first(self: bus.Publisher, *args: Any) -> dict[str, Any]:
        with frozen(server):
            return await publish_within(self, *args)

    async with _ingress(settings) as (nc, d, http):
        auth = await api_headers(nc)
        request = {"destination": d["trigger"]["trigger_id"], "event_type": "post"}
        monkeypatch.setattr(bus.Publisher, "publish_within", frozen_first)
        r = await http.post(
            "/api/event.dispatch", content=wire.encode(wire.StoreRequest(request)), headers=auth
        )
        monkeypatch.setattr(bus.Publisher, "publish_within", publish_within)
        assert r.status_code == 503, r.content
        error = wire.decode(wire.StoreReply, r.content).error
        eid = re.search(r"event (evt_\w+) may", error)[1]  # type: ignore[index]
        assert error == (
            f"the event store did not answer within 1s: event {eid} may still be stored and "
            f"run (ak event get {eid}); check before sending it again"
        )
        await eventually(lambda: _stored(nc.jetstream(), d["project_id"], eid))  # as it said
        ok = await http.post(
            "/api/event.dispatch", content=wire.encode(wire.StoreRequest(request)), headers=auth
        )
        assert ok.status_code == 200, ok.content


async def _stored(js: Any, project_id: str, event_id: str) -> bool:
    try:
        await js.get_last_msg(subjects.STREAM_EVENTS, subjects.event_subject(project_id, event_id))
        return True
    except NotFoundError:
        return False


def _nats_server_of(tmp_path: Path) -> int:
    """The pid of the test's nats-server (its configuration is in ``tmp_path``)."""
    conf = str(tmp_path / "nats" / "nats-server.conf")
    out = subprocess.run(["pgrep", "-f", conf], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    assert len(pids) == 1, pids
    return pids[0]


async def test_an_unexpected_error_is_an_api_answer_naming_its_log_entry(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error ingress did not expect (a bug) answers 500 in the API's own form, as every
    failure does (the CLI reads it), naming its log entry, not its text (it was FastAPI's
    plain "Internal Server Error")."""
    from ak_ingress import app as ingress_app

    async def broken(*args: Any) -> Any:
        raise RuntimeError("a statement quoting secret value hunter2")

    async with _ingress(settings) as (nc, d, http):
        auth = await api_headers(nc)
        monkeypatch.setattr(ingress_app, "perform", broken)
        r = await http.post(
            "/api/project.list", content=wire.encode(wire.StoreRequest({})), headers=auth
        )
        assert r.status_code == 500, r.content
        reply = wire.decode(wire.StoreReply, r.content)
        assert reply.error_kind == "internal" and "hunter2" not in reply.error, reply
        assert re.fullmatch(
            r"project\.list failed with RuntimeError: an internal error, logged as error "
            r"[0-9a-f]{8} by ingress \d+",
            reply.error,
        ), reply.error


async def test_a_webhooks_head_counts_in_its_projects_budget_as_its_body_does(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event carries a request's URL (as sent, as a path and as a query) and its
    headers as well as its body: requests with an empty body and 60 KiB of query string
    (each event ~180 KiB) were counted 1 KiB each, so a flood of them brought their
    project's events in at 40 times AK_HTTP__WEBHOOK_PROJECT_MB, unrefused."""
    now = [1000.0]
    monkeypatch.setattr(WebhookBytes, "clock", staticmethod(lambda: now[0]))
    async with _ingress(settings, HttpLimits(webhook_project_mb=1)) as (nc, d, http):
        query = "q=" + "x" * (60 * 1024)
        url = f"/webhooks/{d['trigger']['webhook_slug']}?{query}"
        codes = [(await http.get(url)).status_code for _ in range(40)]
        # 4 MiB at once: at most 4 MiB / 120 KiB (the query twice) of them.
        assert codes.count(202) <= 34, codes
        assert codes[-1] == 429


async def test_a_sync_webhook_waits_without_holding_its_requests_data(
    settings: Settings,
) -> None:
    """A sync request waits for its sessions' outcome up to the webhook timeout, also after
    its client has gone: its event's data was held meanwhile (12 MiB for a 512 KiB body of
    175,000 empty maps), and a flood of such requests, each client leaving at once, grew
    ingress by 2 GiB. (No dispatcher here: the request waits for its timeout.)"""
    marker = "held-" + "7" * 20
    async with _ingress(settings) as (nc, _, http):
        js = nc.jetstream()
        s = await deploy(nc, "s", {"simple.py": b""}, SYNC)
        stored = (await js.stream_info(subjects.STREAM_EVENTS)).state.messages
        body = json.dumps({marker: [1, 2, 3]}).encode()
        waiting = asyncio.create_task(
            http.post(f"/webhooks/{s['trigger']['webhook_slug']}", content=body)
        )

        async def published() -> bool:
            return (await js.stream_info(subjects.STREAM_EVENTS)).state.messages > stored

        async def let_go() -> bool:
            return not any(isinstance(o, dict) and marker in o for o in gc.get_objects())

        try:
            await eventually(published)
            await eventually(let_go, timeout=5)
            assert not waiting.done()  # still waiting for the outcome
        finally:
            waiting.cancel()


async def test_a_json_bodys_lists_and_maps_count_in_its_projects_budget(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each list and map of a JSON body is a Python object on every hop (ingress, runner,
    the handler's worker): 512 KiB of ``[{},{},...]`` took ~200 ms of the stack's CPU to
    run, five times a text body of as many bytes, and 16 of them a second (8 MiB) held
    another project's sync webhook up to 32 s. Each now counts ``JSON_CONTAINER_BYTES``."""
    now = [1000.0]
    monkeypatch.setattr(WebhookBytes, "clock", staticmethod(lambda: now[0]))
    async with _ingress(settings, HttpLimits(webhook_project_mb=1)) as (nc, d, http):
        other = await deploy(nc, "q", {"simple.py": b""})
        maps = b"[" + b"{}," * 20_000 + b"{}]"  # 60 KiB (twice), 20,001 maps: ~1.3 MiB
        hook = f"/webhooks/{d['trigger']['webhook_slug']}"
        codes = [(await http.post(hook, content=maps)).status_code for _ in range(6)]
        assert codes == [202] * 3 + [429] * 3  # 4 MiB at once
        text = b"x" * len(maps)  # as many bytes of text: 118 KiB counted
        hook = f"/webhooks/{other['trigger']['webhook_slug']}"
        codes = [(await http.post(hook, content=text)).status_code for _ in range(30)]
        assert codes == [202] * 30


async def test_a_webhooks_query_fields_count_in_its_projects_budget(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingress parses a query string into a map in its event loop, ~1 µs a field: 60
    requests a second of 64 KiB queries of 32,000 fields (``a&a&...``) were within their
    project's bytes and held another project's sync webhook 5 s at the median. Each field
    counts ``QUERY_FIELD_BYTES``."""
    now = [1000.0]
    monkeypatch.setattr(WebhookBytes, "clock", staticmethod(lambda: now[0]))
    async with _ingress(settings, HttpLimits(webhook_project_mb=1)) as (nc, d, http):
        other = await deploy(nc, "q", {"simple.py": b""})
        fields = "&".join(["a"] * 30_000)  # 60 KiB, 30,000 fields: ~2 MiB counted
        hook = f"/webhooks/{d['trigger']['webhook_slug']}?{fields}"
        codes = [(await http.get(hook)).status_code for _ in range(4)]
        assert codes == [202] * 2 + [429] * 2  # 4 MiB at once
        one = "a=" + "b" * (len(fields) - 2)  # as long, one field: 120 KiB counted
        hook = f"/webhooks/{other['trigger']['webhook_slug']}?{one}"
        codes = [(await http.get(hook)).status_code for _ in range(30)]
        assert codes == [202] * 30
