"""What a build may hold: its file names and how many files and bytes (akcore.buildfiles)."""

from __future__ import annotations

import pytest
from akcore.buildfiles import MAX_BUILD_BYTES, MAX_BUILD_FILES, check_build
from akcore.errors import InvalidArgument


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../x", "'../x' is not a plain relative path"),
        ("a/../../x", "is not a plain relative path"),
        ("./a.py", "is not a plain relative path"),
        ("a//b.py", "is not a plain relative path"),
        ("a/", "is not a plain relative path"),
        ("/etc/cron.d/x", "'/etc/cron.d/x' is absolute"),
        ("a\x00b", "has a control character"),
        ("a\nb.py", "has a control character"),
        ("a\x7fb", "has a control character"),
        ("..\\..\\x", "has a backslash: separate directories with /"),
        ("d/" + "x" * 256, "has a part over 255 bytes"),
        ("d/" * 600 + "x", "is over 1024 characters"),
        ("\udcff.py", "is not valid UTF-8"),
        ("", "a file has an empty name"),
    ],
)
def test_a_file_name_must_be_a_plain_relative_path(name: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_build({"h.py": b"", name: b"x"})
    assert e.value.message.startswith("invalid build: ") and problem in e.value.message
    assert len(e.value.message) < 300


def test_plain_names_pass() -> None:
    check_build(
        {"h.py": b"", "pkg/__init__.py": b"", "a b/ünï.txt": b"", ".env": b"", "x" * 255: b""}
    )


def test_a_file_cannot_also_be_a_directory() -> None:
    with pytest.raises(InvalidArgument, match="'a/b' is both a file and a directory"):
        check_build({"a/b": b"", "a/b/c.py": b""})


def test_too_many_files_or_bytes() -> None:
    with pytest.raises(InvalidArgument, match=f"has {MAX_BUILD_FILES + 1:,} files, over the limit"):
        check_build({f"d{i // 1000}/{i}": b"x" for i in range(MAX_BUILD_FILES + 1)})
    check_build({f"d{i // 1000}/{i}": b"x" for i in range(MAX_BUILD_FILES)})
    with pytest.raises(InvalidArgument, match=f"over the {MAX_BUILD_BYTES} byte limit"):
        check_build({"a": b"x" * MAX_BUILD_BYTES, "b": b"x"})
