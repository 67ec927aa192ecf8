"""The web UI over real HTTP against `ak up`: login with an API token, what pages show
(escaped, secrets masked), CSRF and cross-site refusals, and the tokens-off rules."""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.uiproject import HOSTILE, SECRET, deploy
from tests.helpers import Stack, frozen, start_stack


@pytest.fixture(scope="module")
def demo(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return deploy(stack, tmp_path_factory.mktemp("ui_demo"))


def _csrf(client: httpx.Client, path: str = "/ui/login") -> str:
    """The CSRF token of a page's forms (its cookie is now in the client)."""
    page = client.get(path)
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


@contextlib.contextmanager
def _logged_in(stack: Stack) -> Iterator[httpx.Client]:
    """A client logged in as a browser would: the login page's form, with the API token."""
    with httpx.Client(base_url=stack.url, timeout=20) as client:
        csrf = _csrf(client)
        resp = client.post(
            "/ui/login",
            data={"token": stack.token, "csrf": csrf, "next": "/ui/projects"},
            headers={"Origin": stack.url},
        )
        assert resp.status_code == 303, resp.text
        assert resp.headers["location"] == "/ui/projects"
        yield client


def test_pages_need_a_login(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=20) as client:
        assert client.get("/").headers["location"] == "/ui/sessions"
        resp = client.get("/ui/sessions?project=x")
        assert resp.status_code == 303
        assert resp.headers["location"] == "/ui/login?next=/ui/sessions%3Fproject%3Dx"
        # A fragment the page script polls says 401 rather than redirecting.
        assert client.get("/ui/sessions/rows", headers={"X-AK-Fragment": "1"}).status_code == 401
        csrf = _csrf(client)
        bad = client.post(
            "/ui/login", data={"token": "nope", "csrf": csrf}, headers={"Origin": stack.url}
        )
        assert bad.status_code == 401
        assert "invalid API token" in bad.text
        empty = client.post(
            "/ui/login", data={"token": " ", "csrf": csrf}, headers={"Origin": stack.url}
        )
        assert empty.status_code == 401 and "type an API token" in empty.text
        # The static script needs no login, and is the only script.
        assert client.get("/ui/static/ui.js").status_code == 200
        assert client.get("/ui/static/../app.py").status_code == 404


def test_login_sets_a_strict_http_only_cookie(stack: Stack) -> None:
    with _logged_in(stack) as client:
        cookie = next(c for c in client.cookies.jar if c.name == "ak_ui_token")
        assert cookie.path == "/ui"
        assert cookie.has_nonstandard_attr("HttpOnly")
        assert cookie.get_nonstandard_attr("SameSite") == "strict"
        assert client.get("/ui/sessions").status_code == 200


def test_login_goes_on_to_ui_pages_only(stack: Stack) -> None:
    """``next`` may name a UI page only: not a dot segment a browser resolves out of /ui
    (``%2e%2e`` is one to a browser), which would land the admin, just logged in, on a
    webhook's page of this origin (a project's, asking for the token again)."""
    escaping = (
        "/ui/%2e%2e/webhooks/x",
        "/ui/.%2E/webhooks/x",
        "/ui/../webhooks/x",
        "/ui/sessions/..",
        "/ui/\\..\\webhooks/x",
        "/ui//evil.example/",
        "//evil.example/ui/",
        "https://evil.example/ui/",
        "/ui/%0a/x",
    )
    with httpx.Client(base_url=stack.url, timeout=20) as client:
        csrf = _csrf(client)
        for target in (*escaping, "/ui/sessions/ses_x?skip=500&project=a%2Fb"):
            form = {"token": stack.token, "csrf": csrf, "next": target}
            resp = client.post("/ui/login", data=form, headers={"Origin": stack.url})
            assert resp.status_code == 303, resp.text
            expected = "/ui/sessions" if target in escaping else target
            assert resp.headers["location"] == expected, target
            shown = client.get("/ui/login", params={"next": target}).text
            assert f'name="next" value="{html.escape(expected)}"' in shown, target


def test_login_from_another_site_is_refused(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=20) as client:
        csrf = _csrf(client)
        resp = client.post(
            "/ui/login",
            data={"token": stack.token, "csrf": csrf},
            headers={"Origin": "http://localhost:1"},
        )
        assert resp.status_code == 403
        assert not any(c.name == "ak_ui_token" for c in client.cookies.jar)


def test_prints_render_as_text_and_secrets_stay_masked(stack: Stack, demo: dict[str, str]) -> None:
    status, event_id = stack.post_json(demo["hook"], {"name": "<img src=x onerror=alert(1)>"})
    assert status == 202
    sid = stack.session_of("ui_demo", event_id)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    with _logged_in(stack) as client:
        page = client.get(f"/ui/sessions/{sid}")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;b&gt;bold?&lt;/b&gt;" in page.text
        assert HOSTILE not in page.text
        assert "<img src=x" not in page.text and "&lt;img src=x" in page.text
        assert "doubled 20" in page.text
        assert "#1 double (args " in page.text and "#2 double (args " in page.text
        projects = client.get("/ui/projects").text
        assert SECRET not in projects and "(secret)" in projects
        assert "plain-value" in projects
        assert f"{stack.url}{demo['hook']}" in projects
        listed = client.get("/ui/sessions?project=ui_demo&state=COMPLETED").text
        assert sid in listed

        assert client.get("/ui/sessions?state=RUNNING&project=ui_demo").text.count(sid) == 0
        # Spans reach the store in batches: the page shows all four services once they have.
        services = ("ak-ingress", "ak-dispatcher", "ak-runner", "ak-store")
        stack.wait_until(lambda: {s["service"] for s in stack.spans(sid)} >= set(services), "spans")
        trace = client.get(f"/ui/sessions/{sid}/trace").text
        for service in services:
            assert f'data-service="{service}"' in trace


def test_stop_needs_this_origin_and_the_csrf_token(stack: Stack, demo: dict[str, str]) -> None:
    status, event_id = stack.post_json(demo["wait"], {})
    assert status == 202
    sid = stack.session_of("ui_demo", event_id)
    stack.wait_output("waiting for more", "session", "prints", sid)
    with _logged_in(stack) as client:
        csrf = _csrf(client, f"/ui/sessions/{sid}")
        stop = f"/ui/sessions/{sid}/stop"
        no_origin = client.post(stop, data={"csrf": csrf})
        other_port = client.post(
            stop, data={"csrf": csrf}, headers={"Origin": "http://127.0.0.1:1"}
        )
        no_token = client.post(stop, data={"csrf": ""}, headers={"Origin": stack.url})
        wrong = client.post(stop, data={"csrf": csrf + "x"}, headers={"Origin": stack.url})
        for refused in (no_origin, other_port, no_token, wrong):
            assert refused.status_code == 403, refused.text
        assert stack.ak("session", "get", sid, "-j").stdout.count('"RUNNING"') == 1
        ok = client.post(stop, data={"csrf": csrf}, headers={"Origin": stack.url})
        assert ok.status_code == 303
        assert stack.wait_session(sid)["state"] == "STOPPED"
        again = client.post(stop, data={"csrf": csrf}, headers={"Origin": stack.url})
        assert again.status_code == 409 and "already in a final state" in again.text


def test_events_show_their_sessions_and_redispatch(stack: Stack, demo: dict[str, str]) -> None:
    status, event_id = stack.post_json(demo["hook"], {"again": "<i>x</i>"})
    sid = stack.session_of("ui_demo", event_id)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    with _logged_in(stack) as client:
        listed = client.get("/ui/events?project=ui_demo").text
        assert f'href="/ui/events/{event_id}"' in listed
        assert f'href="/ui/sessions/{sid}"' in listed and "ui_demo:hook" in listed
        page = client.get(f"/ui/events/{event_id}")
        assert "&lt;i&gt;x&lt;/i&gt;" in page.text and "<i>x</i>" not in page.text
        csrf = _csrf(client, f"/ui/events/{event_id}")
        path = f"/ui/events/{event_id}/redispatch"
        assert client.post(path, data={"csrf": csrf}).status_code == 403  # no Origin
        copy = client.post(path, data={"csrf": csrf}, headers={"Origin": stack.url})
        assert copy.status_code == 303
        new_event = copy.headers["location"].rsplit("/", 1)[1]
        assert new_event.startswith("evt_") and new_event != event_id
        again = stack.session_of("ui_demo", new_event)
        assert stack.wait_session(again)["state"] == "COMPLETED"
        shown = client.get(copy.headers["location"]).text
        assert f'href="/ui/sessions/{again}"' in shown and event_id in shown


def test_sessions_are_paged_as_the_cli_pages_them(stack: Stack, demo: dict[str, str]) -> None:
    events = {stack.post_json(demo["hook"], {"page": n})[1] for n in range(3)}
    stack.sessions_of_events("ui_demo", events)
    shown: list[str] = []
    with _logged_in(stack) as client:
        path = "/ui/sessions?project=ui_demo&size=2"
        while path:
            page = client.get(path).text
            shown += re.findall(r'data-session="(ses_\w+)"', page)
            assert ("data-refresh" in page) == (path.endswith("size=2"))  # the first page is live
            found = re.search(r'href="([^"]+)" rel="next"', page)
            path = html.unescape(found.group(1)) if found else ""
    listed = stack.ak("session", "list", "-p", "ui_demo", "--page-size", "1000", "-j").stdout
    assert shown == [json.loads(line)["session_id"] for line in listed.splitlines()]


def test_missing_session_says_why(stack: Stack) -> None:
    with _logged_in(stack) as client:
        page = client.get("/ui/sessions/ses_00000000000000000000000000")
        assert page.status_code == 404
        assert "not found" in page.text


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A dev stack with API tokens off."""
    s = start_stack(tmp_path_factory.mktemp("open"), {"AK_AUTH__TOKENS": "off"})
    yield s
    s.stop()


def test_tokens_off_serves_loopback_pages_of_this_site_only(open_stack: Stack) -> None:
    with httpx.Client(base_url=open_stack.url, timeout=20) as client:
        assert client.get("/ui/sessions").status_code == 200
        assert client.get("/ui/login").headers["location"] == "/ui/sessions"
        own = client.get("/ui/projects", headers={"Sec-Fetch-Site": "same-origin"})
        assert own.status_code == 200
        assert 'action="/ui/logout"' not in own.text
        rebound = client.get("/ui/sessions", headers={"Host": "evil.example:9980"})
        assert rebound.status_code == 403
        cross = client.get("/ui/sessions", headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403
        same_site = client.get("/ui/sessions", headers={"Sec-Fetch-Site": "same-site"})
        assert same_site.status_code == 403


def test_static_files_and_pages_load_nothing_from_elsewhere(stack: Stack, tmp_path: Path) -> None:
    with _logged_in(stack) as client:
        for path in ("/ui/sessions", "/ui/projects"):
            text = client.get(path).text
            assert "https://" not in text.replace(stack.url, "")
            assert 'src="/ui/static/ui.js"' in text


def test_a_page_says_when_the_store_is_away(open_stack: Stack) -> None:
    """A frozen store: the page answers 503 and says who did not answer, not a blank page."""
    (store,) = open_stack.pids("store")
    with frozen(store), httpx.Client(base_url=open_stack.url, timeout=60) as client:
        page = client.get("/ui/sessions")
    assert page.status_code == 503
    assert "store did not answer" in page.text and "Try again" in page.text
    with httpx.Client(base_url=open_stack.url, timeout=60) as client:
        assert client.get("/ui/sessions").status_code == 200


def test_vars_are_set_and_deleted_from_the_projects_page(
    stack: Stack, demo: dict[str, str]
) -> None:
    with _logged_in(stack) as client:
        csrf = _csrf(client, "/ui/projects")
        project = client.get("/ui/projects").text.split('<section class="project" id="', 1)[1]
        project = project.split('"', 1)[0]
        base = f"/ui/projects/{project}/vars"
        form = {"csrf": csrf, "name": "FROM_UI", "value": "ui-made-secret", "secret": "on"}
        assert client.post(f"{base}/set", data=form).status_code == 403  # no Origin
        done = client.post(f"{base}/set", data=form, headers={"Origin": stack.url})
        assert done.status_code == 303
        page = client.get("/ui/projects").text
        assert 'data-var="FROM_UI"' in page and "ui-made-secret" not in page
        shown = stack.ak("var", "get", "FROM_UI", "-p", "ui_demo", "--reveal", "-j", check=True)
        assert "ui-made-secret" in shown.stdout
        gone = client.post(
            f"{base}/delete", data={"csrf": csrf, "name": "FROM_UI"}, headers={"Origin": stack.url}
        )
        assert gone.status_code == 303
        assert 'data-var="FROM_UI"' not in client.get("/ui/projects").text


def test_a_session_links_its_children_and_they_link_back(
    stack: Stack, demo: dict[str, str]
) -> None:
    status, event_id = stack.post_json(demo["spawn"], {})
    parent = stack.session_of("ui_demo", event_id)
    assert stack.wait_session(parent)["state"] == "COMPLETED"
    prints = stack.ak("session", "prints", parent, "-n", check=True).stdout.splitlines()
    started = [line.split()[1] for line in prints if line.startswith("started ses_")]
    assert len(started) == 2
    with _logged_in(stack) as client:
        page = client.get(f"/ui/sessions/{parent}").text
        listed = re.search(r'id="child-sessions">(.*?)</ul>', page, re.S)
        assert listed, page
        assert sorted(re.findall(r'href="/ui/sessions/(ses_\w+)"', listed.group(1))) == sorted(
            started
        )
        for child in started:
            stack.wait_session(child)
            shown = client.get(f"/ui/sessions/{child}").text
            assert f'id="parent-session">{parent}<' in shown
            assert 'id="child-sessions"' not in shown  # a child without children lists none
        only = client.get(f"/ui/sessions?parent={parent}").text
        assert sorted(re.findall(r'data-session="(ses_\w+)"', only)) == sorted(started)


def test_sessions_and_events_filter_by_trigger_and_time(stack: Stack, demo: dict[str, str]) -> None:
    _, hooked = stack.post_json(demo["hook"], {"filter": "trigger"})
    _, spawned = stack.post_json(demo["spawn"], {})
    by_hook = stack.session_of("ui_demo", hooked)
    by_spawn = stack.session_of("ui_demo", spawned)
    triggers = {t["name"]: t["trigger_id"] for t in stack.api("trigger.list", project="ui_demo")}
    with _logged_in(stack) as client:

        def sessions(query: str) -> set[str]:
            page = client.get(f"/ui/sessions?{query}")
            assert page.status_code == 200, page.text
            return set(re.findall(r'data-session="(ses_\w+)"', page.text))

        hook_only = sessions(f"trigger={triggers['hook']}&size=1000")
        assert by_hook in hook_only and by_spawn not in hook_only
        assert by_hook in sessions("project=ui_demo&trigger=hook&size=1000")  # by its name
        assert by_hook in sessions("within=15m&size=1000")
        assert not sessions("created_before=2000-01-01T00:00:00Z")
        assert by_hook in sessions("created_after=2000-01-01T00:00:00Z&size=1000")
        bad = client.get("/ui/sessions?created_after=yesterday")
        assert bad.status_code == 400 and "is not a time: use RFC 3339" in bad.text
        assert "Use one of 15m, 1h" in client.get("/ui/sessions?within=3y").text
        unknown = client.get("/ui/sessions?project=ui_demo&trigger=nope")
        assert unknown.status_code == 404
        assert 'trigger "nope" not found' in html.unescape(unknown.text)
        events = client.get(f"/ui/events?trigger={triggers['spawn']}").text
        shown = set(re.findall(r'data-event="(evt_\w+)"', events))
        assert spawned in shown and hooked not in shown
    listed = stack.api("event.list", project="ui_demo", trigger="hook")
    assert hooked in {e["event_id"] for e in listed}
    assert spawned not in {e["event_id"] for e in listed}


def test_the_journal_shows_how_long_each_activity_ran(stack: Stack, demo: dict[str, str]) -> None:
    _, event_id = stack.post_json(demo["hook"], {"timed": True})
    sid = stack.session_of("ui_demo", event_id)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    with _logged_in(stack) as client:
        page = client.get(f"/ui/sessions/{sid}").text
        listed = client.get("/ui/sessions?project=ui_demo&size=1000").text
    assert len(re.findall(r"#\d double \(args \w+\) ok in \d+(\.\d+)? (ms|s)", page)) == 2, page
    row = re.search(rf'data-session="{sid}">(.*?)</tr>', listed, re.S)
    assert row and re.search(r"<td>(\d+ ms|[\d.]+ s)</td>", row.group(1)), listed  # it took


def test_numbers_out_of_range_and_mistyped_ids_are_clear_errors(
    stack: Stack, demo: dict[str, str]
) -> None:
    _, event_id = stack.post_json(demo["hook"], {"range": True})
    sid = stack.session_of("ui_demo", event_id)
    with _logged_in(stack) as client:
        huge_page = client.get("/ui/sessions?page=" + "9" * 30 + ".ses_x")
        assert huge_page.status_code == 400 and "invalid page token" in huge_page.text
        huge_skip = client.get(f"/ui/sessions/{sid}?skip={2**63}")
        assert huge_skip.status_code == 400 and "too large" in huge_skip.text
        bogus = client.get("/ui/sessions/ses_bogus")
        assert bogus.status_code == 404
        assert 'session "ses_bogus" not found' in html.unescape(bogus.text)
    from akcore import wire  # the API too: what msgpack carries past a database's integers

    body = wire.encode(wire.StoreRequest({"skip": 2**64 - 1}))
    status, _, raw = stack.request("POST", "/api/session.list", body, stack.auth())
    reply = wire.decode(wire.StoreReply, raw)
    assert status == 400 and f"must be a whole number, not {2**64 - 1}" in reply.error, reply


def test_a_webhooks_audio_or_video_is_not_sandboxed_and_never_sniffed(
    stack: Stack, demo: dict[str, str]
) -> None:
    """An answer that is audio or video is the browser's own player, which runs no script of
    the answer's (and plays nothing sandboxed): it comes unsandboxed, with nosniff whatever
    the handler says, so that no browser reads its body as a page. Any other type (SVG and
    XML run script), or one that only looks like media, stays sandboxed."""
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        for kind in ("audio/wav", "video/mp4", "Audio/X-WAV; codecs=1"):
            for sniff in ("", "sniff-it"):
                got = client.get(demo["sound"], params={"type": kind, "sniff": sniff})
                assert got.status_code == 200 and got.content.startswith(b"RIFF"), got.text
                assert "content-security-policy" not in got.headers, (kind, got.headers)
                assert got.headers.get_list("x-content-type-options") == ["nosniff"], kind
        for kind in ("image/svg+xml", "text/html", "video/x+xml", "audio/wav, text/html", ""):
            got = client.get(demo["sound"], params={"type": kind})
            assert got.headers["content-security-policy"].startswith("sandbox "), kind


def test_a_webhooks_answer_is_sandboxed_and_sets_no_ui_cookie(
    stack: Stack, demo: dict[str, str]
) -> None:
    """A sync webhook's answer is its handler's (any page, any script) on the UI's own
    origin: it comes sandboxed (an opaque origin, which reads no UI page and posts no UI
    form), and may not set the cookies of the UI's login."""
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        page = client.get(demo["page"])
        assert page.status_code == 200 and "<script>" in page.text
        policies = page.headers.get_list("content-security-policy")
        assert any(p.split()[0] == "sandbox" for p in policies), policies
        assert not any("allow-same-origin" in p for p in policies), policies
        unknown = client.get("/webhooks/nope")  # the ingress's own answers too
        assert unknown.status_code == 404
        assert "sandbox" in unknown.headers["content-security-policy"]
        ui = client.get("/ui/login").headers.get_list("content-security-policy")
        assert ui and not any("sandbox" in p for p in ui)  # the UI's pages are its own
        for name in ("ak_ui_token", "ak_ui_csrf", " ak_ui_token", "AK_UI_TOKEN"):
            refused = client.get(demo["cookie"], params={"name": name})
            assert refused.status_code == 502, (name, refused.text)
            assert "a cookie of this server's web UI" in refused.text, refused.text
            assert "set-cookie" not in refused.headers
        other = client.get(demo["cookie"], params={"name": "visits"})
        assert other.status_code == 200
        assert other.headers["set-cookie"] == "visits=theirs; Path=/ui"
