"""Fixtures: a real nats-server on a random port for each test that asks for one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from akcore import natsserver


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    proc, url = natsserver.start(tmp_path / "nats")
    yield url
    proc.terminate()
    proc.wait(timeout=10)
