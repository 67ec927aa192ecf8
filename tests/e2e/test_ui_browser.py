"""The web UI in a real browser (headless Chromium) against `ak up`: log in, watch a new
session appear and its prints stream in without a reload, read the journal and the
waterfall, stop a session from its page, see a secret masked. Each test saves a screenshot
(tests/e2e/browser.py says where)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.e2e import browser as chromium
from tests.e2e.uiproject import SECRET, deploy
from tests.helpers import Stack

SERVICES = ("ak-ingress", "ak-dispatcher", "ak-runner", "ak-store")


def _by() -> Any:
    from selenium.webdriver.common.by import By

    return By


@pytest.fixture(scope="module")
def demo(stack: Stack, browser: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The project deployed, its first session ("first": the one whose trace holds the
    store's lookups, which later ones find cached), the browser logged in through the
    login page."""
    paths = deploy(stack, tmp_path_factory.mktemp("ui_demo"))
    status, event_id = stack.post_json(paths["hook"], {"first": True})
    assert status == 202
    paths["first"] = stack.session_of("ui_demo", event_id)
    by = _by()
    browser.get(f"{stack.url}/ui/sessions?project=ui_demo")
    chromium.wait_for(browser, lambda d: "/ui/login" in d.current_url, "the login page")
    chromium.shot(browser, "login")
    browser.find_element(by.ID, "token").send_keys(stack.token)
    browser.find_element(by.ID, "login").click()
    chromium.wait_for(
        browser, lambda d: d.current_url.endswith("/ui/sessions?project=ui_demo"), "sessions"
    )
    return paths


def _mark_page(browser: Any) -> None:
    """Marks the loaded page: the mark survives live updates, not a reload."""
    browser.execute_script("window.akTestMark = 'same page';")


def _same_page(browser: Any) -> bool:
    return bool(browser.execute_script("return window.akTestMark === 'same page';"))


def _row_texts(browser: Any, selector: str) -> list[str]:
    """The rows' texts read in one script, so a live update cannot replace a row mid-read."""
    script = "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText.trim());"
    return list(browser.execute_script(script, selector))


def test_a_new_session_appears_without_a_reload(
    stack: Stack, browser: Any, demo: dict[str, str]
) -> None:
    browser.get(f"{stack.url}/ui/sessions?project=ui_demo")
    _mark_page(browser)
    status, event_id = stack.post_json(demo["hook"], {"who": "browser"})
    assert status == 202
    sid = stack.session_of("ui_demo", event_id)
    row = f'tr[data-session="{sid}"]'
    chromium.wait_for(browser, lambda d: d.find_elements(_by().CSS_SELECTOR, row), "the row")
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    chromium.wait_for(
        browser, lambda d: "COMPLETED" in d.find_element(_by().CSS_SELECTOR, row).text, "state"
    )
    assert _same_page(browser)
    # local time shown, UTC on hover; read in one probe, as live updates may replace the row
    title = chromium.wait_for(
        browser,
        lambda d: d.find_element(_by().CSS_SELECTOR, f"{row} time").get_attribute("title"),
        "the row's time",
    )
    assert title.endswith("(UTC)"), title
    chromium.shot(browser, "sessions")


def test_prints_stream_in_while_the_session_runs(
    stack: Stack, browser: Any, demo: dict[str, str]
) -> None:
    status, event_id = stack.post_json(demo["wait"], {})
    assert status == 202
    sid = stack.session_of("ui_demo", event_id)
    browser.get(f"{stack.url}/ui/sessions/{sid}")
    prints = "#journal tr.kind-print"
    chromium.wait_for(
        browser, lambda d: "waiting for more" in " ".join(_row_texts(d, prints)), "first print"
    )
    _mark_page(browser)
    assert stack.request("POST", demo["more"], b"second part")[0] == 202
    chromium.wait_for(
        browser, lambda d: "got second part" in " ".join(_row_texts(d, prints)), "second print"
    )
    chromium.wait_for(
        browser, lambda d: "COMPLETED" in d.find_element(_by().ID, "session-state").text, "end"
    )
    assert _same_page(browser)
    chromium.shot(browser, "session-live")


def test_the_journal_shows_activities_and_hostile_prints_as_text(
    stack: Stack, browser: Any, demo: dict[str, str]
) -> None:
    status, event_id = stack.post_json(demo["hook"], {"n": 1})
    sid = stack.session_of("ui_demo", event_id)
    assert stack.wait_session(sid)["state"] == "COMPLETED"
    browser.get(f"{stack.url}/ui/sessions/{sid}")
    texts = _row_texts(browser, "#journal tbody tr")
    assert any(re.search(r"#1 double \(args \w+\) ok in [\d.]+ m?s$", t) for t in texts), texts
    assert any("<script>window.pwned=1</script><b>bold?</b>" in t for t in texts), texts
    assert browser.execute_script("return window.pwned === undefined;")
    assert not browser.find_elements(_by().CSS_SELECTOR, "#journal b")
    body = browser.find_element(_by().ID, "event-body").text
    assert json.loads(body) == {"n": 1}
    chromium.shot(browser, "session")
    browser.find_element(_by().LINK_TEXT, event_id).click()  # the input event's own page
    chromium.wait_for(browser, lambda d: d.current_url.endswith(f"/ui/events/{event_id}"), "event")
    assert browser.find_element(_by().LINK_TEXT, sid)
    chromium.shot(browser, "event")


def test_the_waterfall_shows_spans_of_all_four_services(
    stack: Stack, browser: Any, demo: dict[str, str]
) -> None:
    sid = demo["first"]
    stack.wait_session(sid)
    stack.wait_until(lambda: {s["service"] for s in stack.spans(sid)} >= set(SERVICES), "spans")
    browser.get(f"{stack.url}/ui/sessions/{sid}/trace")
    spans = browser.find_elements(_by().CSS_SELECTOR, "ol.waterfall > li")
    assert {s.get_attribute("data-service") for s in spans} >= set(SERVICES)
    first = spans[0].find_element(_by().TAG_NAME, "summary")
    first.click()  # its attributes open
    attrs = spans[0].find_element(_by().CSS_SELECTOR, "table.attrs")
    chromium.wait_for(browser, lambda d: attrs.is_displayed(), "the span's attributes")
    assert "http.route" in attrs.text
    chromium.shot(browser, "trace")


def test_stop_works_from_the_page(stack: Stack, browser: Any, demo: dict[str, str]) -> None:
    status, event_id = stack.post_json(demo["wait"], {})
    sid = stack.session_of("ui_demo", event_id)
    browser.get(f"{stack.url}/ui/sessions/{sid}")
    chromium.wait_for(
        browser,
        lambda d: "waiting for more" in " ".join(_row_texts(d, "#journal tr.kind-print")),
        "the session waiting",
    )
    chromium.click(browser, "stop")
    chromium.wait_for(
        browser, lambda d: "STOPPED" in d.find_element(_by().ID, "session-state").text, "STOPPED"
    )
    assert stack.wait_session(sid)["state"] == "STOPPED"
    assert not browser.find_elements(_by().ID, "stop")
    chromium.shot(browser, "session-stopped")


def test_projects_show_webhooks_and_mask_secrets(
    stack: Stack, browser: Any, demo: dict[str, str]
) -> None:
    browser.get(f"{stack.url}/ui/projects")
    page = browser.find_element(_by().TAG_NAME, "main").text
    assert SECRET not in browser.page_source
    assert "(secret)" in page and "plain-value" in page
    assert f"{stack.url}{demo['hook']}" in page
    chromium.shot(browser, "projects")


def test_pages_fit_a_phone(stack: Stack, browser: Any, demo: dict[str, str]) -> None:
    browser.set_window_size(390, 844)
    try:
        for name, path in (("phone-sessions", "/ui/sessions"), ("phone-projects", "/ui/projects")):
            browser.get(stack.url + path)
            wide = browser.execute_script(
                "return document.body.scrollWidth - document.documentElement.clientWidth;"
            )
            assert wide <= 0, f"{path} is {wide}px wider than a phone"
            chromium.shot(browser, name)
    finally:
        browser.set_window_size(1280, 900)


def test_a_webhooks_sound_plays_opened_by_its_url(
    stack: Stack, browser: Any, demo: dict[str, str]
) -> None:
    """A sync webhook's audio (or video) opened by its URL plays in the browser's own player
    (which, in a sandboxed document, fetched it from an opaque origin and was refused)."""
    browser.get(stack.url + demo["sound"])
    script = """const v = document.querySelector('video');
        return !v ? '' : v.error ? 'error ' + v.error.code : v.readyState >= 1 ? 'loaded' : '';"""
    state = chromium.wait_for(browser, lambda d: d.execute_script(script), "the player")
    assert state == "loaded", state


def test_a_webhooks_page_cannot_act_as_the_ui(
    stack: Stack, browser: Any, demo: dict[str, str]
) -> None:
    """The logged-in admin opens a sync webhook's URL (same origin as the UI): its page's
    script runs, but neither reads the UI's pages nor posts its forms."""
    browser.get(stack.url + demo["page"])
    title = chromium.wait_for(
        browser, lambda d: d.title if d.title != "loading" else "", "the page's script"
    )
    assert title == "kept out: TypeError", title
    assert "FROM_PAGE" not in {v["name"] for v in stack.api("var.get", project="ui_demo")}
    browser.get(f"{stack.url}/ui/projects")  # still logged in
    chromium.wait_for(browser, lambda d: d.current_url.endswith("/ui/projects"), "projects")
