"""`ak config list|set` and config.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from ak_cli import settings
from akcore.errors import InvalidArgument


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path / "autokitteh" / "config.yaml"


def test_keys_are_the_ak_variables() -> None:
    assert "http.service_url" in settings.known_keys()
    assert settings.env_of("http.service_url") == "AK_HTTP__SERVICE_URL"
    assert settings.key_of("AK_RUNNER__WORKER_ENV") == "runner.worker_env"


def test_set_merges_and_the_environment_wins(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.set_key("http.service_url", "http://h:1")
    settings.set_key("timeout", "5s")
    assert yaml.safe_load(home.read_text()) == {
        "http": {"service_url": "http://h:1"},
        "timeout": "5s",
    }
    monkeypatch.delenv("AK_HTTP__SERVICE_URL", raising=False)
    monkeypatch.setenv("AK_TIMEOUT", "9s")
    settings.load_into_environment()
    assert os.environ["AK_HTTP__SERVICE_URL"] == "http://h:1"
    assert os.environ["AK_TIMEOUT"] == "9s"


def test_unknown_keys_are_refused(home: Path) -> None:
    with pytest.raises(InvalidArgument, match='key "nope" is not a valid configuration'):
        settings.set_key("nope", "1")
    assert not home.exists()
