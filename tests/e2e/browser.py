"""A real browser for the UI's tests: Debian's chromium driven through its chromedriver by
Selenium. Without them the browser tests skip with one line, unless AK_TEST_REQUIRE_BROWSER
is set (scripts/test sets it once scripts/chromium has installed them): then they fail.

Screenshots of the last run go to ``SHOTS`` (emptied as the first browser starts); the
suite prints where (tests/e2e/conftest.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("AK_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AK_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parents[2] / "build" / "ui-screenshots"
started: list[bool] = []  # a browser started in this run (its screenshots are new)


def missing() -> str:
    """Why no browser can run here ("" when one can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} not found (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return ""


def skip_without_browser() -> None:
    why = missing()
    if why and os.environ.get("AK_TEST_REQUIRE_BROWSER"):
        pytest.fail(f"the UI's browser tests need Chromium: {why}")
    if why:
        pytest.skip(f"no browser for the UI tests: {why}")


def start(width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root, Chromium's own sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(arg)
    if not started:
        shutil.rmtree(SHOTS, ignore_errors=True)
        started.append(True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait_for(driver: Any, probe: Callable[[Any], object], what: str, timeout: float = 30) -> Any:
    """Waits until ``probe(driver)`` is true (a state of the page, never a chosen time). An
    element the page's live updates replaced while the probe read it counts as "not yet"."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)

    def looked(d: Any) -> object:
        try:
            return probe(d)
        except WebDriverException as e:
            # Chrome's own word for an element of a page that was just replaced (a form
            # posted, the page loading again): not yet, as a stale element is.
            if "does not belong to the document" in str(e.msg):
                return False
            raise

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(
            looked
        )
    except TimeoutException:
        shot(driver, f"FAILED-{what[:40].replace(' ', '_').replace('/', '_')}")
        raise AssertionError(f"waited {timeout:g} s for {what}") from None


def click(driver: Any, element_id: str) -> None:
    """Clicks the element, finding it again if live updates replace it meanwhile."""

    def clicked(d: Any) -> bool:
        d.find_element("id", element_id).click()
        return True

    wait_for(driver, clicked, f"#{element_id} clicked")


def shot(driver: Any, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
