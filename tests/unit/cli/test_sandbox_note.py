"""`ak up`'s `Sandbox:` line: how handlers are boxed in, said once."""

from __future__ import annotations

import os

import pytest
from ak_cli.up import _sandbox_note


def test_a_runner_that_is_not_root_says_handlers_run_as_its_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AK_RUNNER__SANDBOX", raising=False)
    monkeypatch.setenv("AK_RUNNER__SESSION_TIMEOUT", "30")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _sandbox_note() == (
        "handlers run as this user: `ak up` is not root, so workers cannot get users of "
        "their own; limits: memory 1024 MiB, session timeout 30 s"
    )
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert _sandbox_note().startswith("workers run as user ids 820000-829999; limits:")
    monkeypatch.setenv("AK_RUNNER__SANDBOX", "off")
    assert _sandbox_note().startswith("off (AK_RUNNER__SANDBOX=off): handlers run as this user")
