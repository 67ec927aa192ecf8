"""What `ak deploy` uploads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ak_cli.deploy import collect_files
from akcore.errors import InvalidArgument, NotFound


def _tree(root: Path) -> Path:
    for name in [
        "autokitteh.yaml",
        "a.py",
        "pkg/__init__.py",
        "pkg/m.py",
        ".env",
        ".git/config",
        "__pycache__/a.cpython-311.pyc",
        "pkg/__pycache__/m.pyc",
        "_private.py",
    ]:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(name)
    return root


def test_manifest_dir_upload(tmp_path: Path) -> None:
    root = _tree(tmp_path / "proj")
    files = collect_files(root / "autokitteh.yaml", [], [])
    assert sorted(files) == ["_private.py", "a.py", "pkg/__init__.py", "pkg/m.py"]
    assert files["pkg/m.py"] == b"pkg/m.py"


def test_files_by_basename_and_dirs(tmp_path: Path) -> None:
    root = _tree(tmp_path / "proj")
    files = collect_files(
        root / "autokitteh.yaml", [str(root / "pkg" / "m.py")], [str(root / "pkg")]
    )
    assert sorted(files) == ["__init__.py", "m.py"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="stat nope.py: no such file or directory"):
        collect_files(None, ["nope.py"], [])


def test_symlink_escaping_the_directory_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "proj")
    (tmp_path / "secret.txt").write_text("s")
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InvalidArgument, match="points outside"):
        collect_files(root / "autokitteh.yaml", [], [])


def test_what_is_not_a_regular_file_is_skipped_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO in the project's directory would block the upload for ever."""
    root = _tree(tmp_path / "proj")
    os.mkfifo(root / "pipe")
    files = collect_files(root / "autokitteh.yaml", [], [])
    assert sorted(files) == ["_private.py", "a.py", "pkg/__init__.py", "pkg/m.py"]
    assert f"skipping {root / 'pipe'}: not a regular file" in capsys.readouterr().err


def test_a_file_over_the_builds_size_is_refused_before_it_is_read(tmp_path: Path) -> None:
    root = _tree(tmp_path / "proj")
    with open(root / "huge.bin", "wb") as f:
        f.truncate(64 << 30)  # (sparse: reading it would take 64 GiB)
    with pytest.raises(InvalidArgument, match=r"huge.bin is 68,719,476,736 bytes, over the"):
        collect_files(root / "autokitteh.yaml", [], [])
