"""What a build may hold: how many files, how many bytes, and which file names.

The store checks a build when it is made (``build.create``), ``ak deploy`` before it changes
anything, the runner again before it unpacks one (a build stored before these limits), and
``ak build download`` and ``ak project export`` before they write one's names into an
archive someone else may unpack.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import InvalidArgument, shown

MAX_BUILD_FILES = 10_000
MAX_BUILD_BYTES = 6 * 1024 * 1024  # fits the 8 MiB NATS payload of `ak up` with room to spare
MAX_PATH = 1024  # characters of a file's name, directories included
MAX_PART = 255  # bytes of one directory or file name (the usual file system limit)


def path_problem(name: str) -> str:
    """Why ``name`` cannot name a file of a build ("" when it can): it must be a relative
    path, written the one plain way (``dir/file.py``)."""
    if not name:
        return "a file has an empty name"
    what = f"file name {shown(name)}"
    if len(name) > MAX_PATH:
        return f"{what} is over {MAX_PATH} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"{what} has a control character"
    if "\\" in name:
        return f"{what} has a backslash: separate directories with /"
    if name.startswith("/"):
        return f"{what} is absolute: give it relative to the project's directory"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"{what} is not a plain relative path (no empty, . or .. parts)"
    try:
        if any(len(p.encode()) > MAX_PART for p in parts):
            return f"{what} has a part over {MAX_PART} bytes"
    except UnicodeEncodeError:
        return f"{what} is not valid UTF-8"
    return ""


def check_build(files: Mapping[str, bytes]) -> None:
    """Raises InvalidArgument saying what is wrong with a build of ``files`` (name to
    content), and what to do, unless every limit holds."""
    if len(files) > MAX_BUILD_FILES:
        raise InvalidArgument(
            f"the build has {len(files):,} files, over the limit of {MAX_BUILD_FILES:,}: "
            "upload only the project's code with --file/--dir (packages go in "
            "requirements.txt)"
        )
    size = sum(len(data) for data in files.values())
    if size > MAX_BUILD_BYTES:
        raise InvalidArgument(
            f"the build is {size} bytes, over the {MAX_BUILD_BYTES} byte limit: "
            "upload only the project's code with --file/--dir"
        )
    check_paths(files, "invalid build")
    dirs = {name.rsplit("/", i)[0] for name in files for i in range(1, name.count("/") + 1)}
    clash = sorted(dirs & set(files))
    if clash:
        raise InvalidArgument(
            f"invalid build: {shown(clash[0])} is both a file and a directory of other files"
        )


def check_paths(files: Iterable[str], what: str) -> None:
    """Raises InvalidArgument (``what``: the problem) for the first of ``files`` that is
    not a plain relative path."""
    for name in files:
        problem = path_problem(name)
        if problem:
            raise InvalidArgument(f"{what}: {problem}")
