"""The compose stack's checks run only inside scripts/compose-test, which brings the stack up
and says where (AK_COMPOSE_URL); the ordinary test run does not collect them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.compose.stack import ComposeStack

collect_ignore_glob = [] if os.environ.get("AK_COMPOSE_URL") else ["test_*.py"]


@pytest.fixture(scope="session")
def stack() -> Iterator[ComposeStack]:
    s = ComposeStack.from_env()
    s.login()
    yield s
