from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import browser as chromium
from tests.helpers import Stack, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (tests/e2e/browser.py); the test skips where there is none."""
    chromium.skip_without_browser()
    driver = chromium.start()
    yield driver
    driver.quit()


_SINCE = time.time()  # (this run's screenshots are newer; they are taken in test processes)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    shots = chromium.SHOTS.glob("*.png") if chromium.SHOTS.is_dir() else []
    if chromium.started or any(p.stat().st_mtime >= _SINCE for p in shots):
        terminalreporter.write_line(f"[ui] screenshots of the browser tests: {chromium.SHOTS}")
