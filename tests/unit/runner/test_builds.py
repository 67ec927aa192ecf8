"""Build unpacking and the worker's environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from ak_runner.builds import unpack_build, worker_env


def test_unpack_once(tmp_path: Path) -> None:
    d = unpack_build(tmp_path, "bld_1", {"a.py": b"x = 1\n", "pkg/__init__.py": b""})
    assert (d / "a.py").read_bytes() == b"x = 1\n" and (d / "pkg" / "__init__.py").exists()
    assert unpack_build(tmp_path, "bld_1", {"a.py": b"changed"}) == d
    assert (d / "a.py").read_bytes() == b"x = 1\n"


@pytest.mark.parametrize("bad", ["../evil.py", "/etc/x.py", "a/../../b.py"])
def test_paths_cannot_escape(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="unsafe path"):
        unpack_build(tmp_path, "bld_2", {bad: b""})
    assert not (tmp_path / "bld_2").exists()


def test_worker_env_drops_internal_settings_and_adds_vars() -> None:
    base = {
        "HOME": "/root",
        "USER": "root",
        "AK_NATS_URL": "nats://x",
        "AK_DB__DSN": "s",
        "OTEL_X": "1",
    }
    assert worker_env(base, {"USER": "Garfield"}, ("AK_", "OTEL_")) == {
        "HOME": "/root",
        "USER": "Garfield",
    }
