"""Build unpacking, the pruning of the build cache, and the worker's environment."""

from __future__ import annotations

import fcntl
import os
import stat
import time
from pathlib import Path

import pytest
from ak_runner import pyenv
from ak_runner.builds import BuildCache, disk_usage
from ak_runner.pyenv import VenvCache
from akcore import config
from akcore.buildfiles import MAX_BUILD_FILES
from akcore.errors import InvalidArgument

MiB = 1024 * 1024


def _cache(tmp_path: Path, max_bytes: int = 100 * MiB, idle: float = 0) -> BuildCache:
    return BuildCache(tmp_path / "builds", max_bytes, idle)


def _age(cache: BuildCache, build_id: str, seconds: float) -> None:
    """Makes a build look last used ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(cache.root / build_id, (then, then))


def test_unpack_once(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    d = cache.unpack("bld_1", {"a.py": b"x = 1\n", "pkg/__init__.py": b""})
    assert (d / "a.py").read_bytes() == b"x = 1\n" and (d / "pkg" / "__init__.py").exists()
    assert cache.unpack("bld_1", {"a.py": b"changed"}) == d
    assert (d / "a.py").read_bytes() == b"x = 1\n"


@pytest.mark.parametrize("bad", ["../evil.py", "/etc/x.py", "a/../../b.py", "a/./b.py"])
def test_paths_cannot_escape(tmp_path: Path, bad: str) -> None:
    cache = _cache(tmp_path)
    with pytest.raises(InvalidArgument, match="invalid build: file name"):
        cache.unpack("bld_2", {bad: b""})
    assert not (cache.root / "bld_2").exists()
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "b.py").exists()


def test_a_build_stored_before_the_limits_is_refused_before_a_file_is_written(
    tmp_path: Path,
) -> None:
    cache = _cache(tmp_path)
    files = {f"d/{i}": b"x" for i in range(MAX_BUILD_FILES + 1)}
    with pytest.raises(InvalidArgument, match=f"{MAX_BUILD_FILES + 1:,} files, over the limit"):
        cache.unpack("bld_many", files)
    assert not cache.root.exists() or not any(cache.root.iterdir())


def test_unused_builds_go_after_the_idle_time_but_not_one_a_session_holds(
    tmp_path: Path,
) -> None:
    cache = _cache(tmp_path, idle=3600)
    for b in ("bld_old", "bld_held", "bld_recent"):
        cache.unpack(b, {"h.py": b"pass\n"})
    held = cache.hold("bld_held")
    assert held is not None
    _age(cache, "bld_old", 7200)
    _age(cache, "bld_held", 7200)
    assert cache.prune() == ["bld_old"]
    assert not (cache.root / "bld_old").exists()
    assert (cache.root / "bld_held" / "h.py").exists() and (cache.root / "bld_recent").exists()
    held.close()  # the session ended
    assert cache.prune() == ["bld_held"]
    assert sorted(os.listdir(cache.root)) == ["bld_recent"]


def test_over_the_cap_the_least_recently_used_go_first(tmp_path: Path) -> None:
    files = {f"f{i}": b"x" for i in range(100)}  # 100 files: 400 KiB of disk or so
    one = disk_usage(_cache(tmp_path / "probe").unpack("bld_x", files))
    cache = _cache(tmp_path, max_bytes=int(one * 2.5))
    for i, b in enumerate(("bld_a", "bld_b", "bld_c", "bld_d")):
        cache.unpack(b, files)
        _age(cache, b, 100 - i)  # bld_a used longest ago
    held = cache.hold("bld_b")  # a session uses it: kept, however long ago it began
    assert held is not None
    _age(cache, "bld_b", 200)
    assert cache.prune() == ["bld_a", "bld_c"]
    assert sorted(os.listdir(cache.root)) == ["bld_b", "bld_d"]
    held.close()


def test_a_build_being_held_elsewhere_survives_and_a_removed_one_is_not_held(
    tmp_path: Path,
) -> None:
    """Another runner sharing the data home (another open file: flock treats it as another
    holder) keeps its build; a build removed meanwhile is reported, to be unpacked again."""
    mine, theirs = _cache(tmp_path, idle=1), _cache(tmp_path, idle=1)
    mine.unpack("bld_1", {"h.py": b""})
    mine.unpack("bld_2", {"h.py": b""})
    held = theirs.hold("bld_1")
    assert held is not None
    _age(mine, "bld_1", 60)
    _age(mine, "bld_2", 60)
    assert mine.prune() == ["bld_2"]
    assert theirs.hold("bld_2") is None
    held.close()


def test_a_build_removed_as_a_session_takes_hold_of_it_is_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the lock file's open and the lock, another runner's prune removes the build
    (and its lock file) and a third unpacks it again: the lock holds a lock file no one
    else will look at, so the session must ask again."""
    cache = _cache(tmp_path)
    cache.unpack("bld_1", {"h.py": b""})
    lock = fcntl.flock

    def removed_first(fd: int, op: int) -> None:
        monkeypatch.setattr(fcntl, "flock", lock)
        assert _cache(tmp_path)._remove("bld_1")
        _cache(tmp_path).unpack("bld_1", {"h.py": b""})
        lock(fd, op)

    monkeypatch.setattr(fcntl, "flock", removed_first)
    assert cache.hold("bld_1") is None
    held = cache.hold("bld_1")  # asked again: the new one
    assert held is not None
    assert not _cache(tmp_path)._remove("bld_1")
    held.close()


def test_a_workers_lock_on_a_builds_directory_keeps_no_session_from_it(tmp_path: Path) -> None:
    """A worker's user can open a build's directory (it reads its code there) and lock it:
    holds and removals go by lock files of root's alone."""
    cache = _cache(tmp_path, idle=1)
    path = cache.unpack("bld_1", {"h.py": b""})
    theirs = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(theirs, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = cache.hold("bld_1")
        assert held is not None
        held.close()
        _age(cache, "bld_1", 60)
        assert cache.prune() == ["bld_1"]
    finally:
        os.close(theirs)
    assert stat.S_IMODE(cache.locks.stat().st_mode) == 0o700


def test_a_crashed_unpack_is_cleaned_up_once_stale(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.root.mkdir(parents=True)
    left = cache.root / ".bld_1-abc"
    (left / "d").mkdir(parents=True)
    fresh = cache.root / ".bld_2-def"
    fresh.mkdir()
    then = time.time() - 2 * 3600
    os.utime(left, (then, then))
    cache.prune()
    assert not left.exists() and fresh.exists()


def _venvs(tmp_path: Path, max_bytes: int = 100 * MiB, idle: float = 0) -> VenvCache:
    return VenvCache(config.project_venvs(), max_bytes, idle, locks=tmp_path / "venvs-locks")


def _venv(venvs: VenvCache, name: str, age: float) -> None:
    """A venv as a build leaves one (its base interpreter recorded beside it), used ``age``
    seconds ago."""
    (venvs.root / name / "bin").mkdir(parents=True)
    (venvs.root / name / "bin" / "python").write_bytes(b"x" * 4096)
    (venvs.root / name / pyenv.MARKER).write_text("{}")
    (venvs.root / f".{name}.python").write_text("/usr/bin/python3\n")
    then = time.time() - age
    os.utime(venvs.root / name, (then, then))


def test_project_environments_go_as_builds_do_but_not_one_held_or_being_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    venvs = _venvs(tmp_path, max_bytes=1)  # over it: every one no one needs goes
    for i, name in enumerate(("v_old", "v_held", "v_building", "v_new")):
        _venv(venvs, name, 100 - i)
    held = venvs.hold("v_held")  # a session runs on it
    assert held is not None
    # A runner builds (or updates) this one: it holds the build lock (``pyenv._file_lock``).
    building = os.open(
        pyenv.lock_file(pyenv.Spec(venvs.root / "v_building", "", "")), os.O_RDWR | os.O_CREAT
    )
    fcntl.flock(building, fcntl.LOCK_EX)
    stale = venvs.root / ".removing-v_gone-1234"  # a crashed prune's
    stale.mkdir()
    then = time.time() - 2 * 3600
    os.utime(stale, (then, then))
    try:
        assert venvs.prune(keep="v_new") == ["v_old"]
    finally:
        os.close(building)
    assert sorted(os.listdir(venvs.root)) == [
        ".v_building.python",
        ".v_held.python",
        ".v_new.python",
        "v_building",
        "v_held",
        "v_new",
    ]  # each kept venv with its base interpreter's record; the stale removal cleaned up
    held.close()  # the session ended, the build is done
    # (v_held's hold marked it used just now: the least recently used goes first)
    assert venvs.prune(keep="v_new") == ["v_building", "v_held"]
    assert sorted(os.listdir(venvs.root)) == [".v_new.python", "v_new"]
    assert venvs.hold("v_held") is None  # removed: a session builds it again
    (venvs.root / "v_held" / "bin").mkdir(parents=True)  # another runner builds it again
    assert venvs.hold("v_held") is None  # not whole yet: this runner waits for that build
    (venvs.root / "v_held" / pyenv.MARKER).write_text("{}")
    again = venvs.hold("v_held")
    assert again is not None
    again.close()


def test_project_environments_unused_for_their_idle_time_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    venvs = _venvs(tmp_path, idle=3600)
    _venv(venvs, "v_old", 7200)
    _venv(venvs, "v_recent", 60)
    assert venvs.prune() == ["v_old"]
    assert sorted(os.listdir(venvs.root)) == [".v_recent.python", "v_recent"]


def test_a_directory_swapped_for_a_link_while_its_size_is_measured_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project environment being built is its builder's (a package's build script) while
    a prune measures it: a directory it lists, swapped for a link before it is entered, is
    not walked. Followed, root walked wherever the link led (the data home's database and
    NATS store, /usr) and counted that as the venv's size, so that the prune removed every
    other project's environment to make room for bytes that were not there."""
    venv = tmp_path / "venvs" / "v_building"
    (venv / "lib").mkdir(parents=True)
    (venv / "lib" / "mod.py").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"  # what the link leads to: 8 MiB of someone else's
    elsewhere.mkdir()
    (elsewhere / "big").write_bytes(b"x" * 8 * MiB)
    real_scandir = os.scandir
    swapped: list[bool] = []

    def scandir(path):  # type: ignore[no-untyped-def]
        listing = real_scandir(path)
        if not swapped:  # the builder, between the listing of the venv and the walk of lib/
            entries = list(listing)
            listing.close()
            swapped.append(True)
            (venv / "lib" / "mod.py").unlink()
            (venv / "lib").rmdir()
            (venv / "lib").symlink_to(elsewhere)
            return _Listing(entries)
        return listing

    monkeypatch.setattr(os, "scandir", scandir)
    size = disk_usage(venv)
    monkeypatch.undo()
    assert swapped and size < MiB


class _Listing:
    """What ``os.scandir`` returns, from entries listed before."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self.entries = entries

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.entries)

    def close(self) -> None:
        pass


def test_a_project_environment_measured_while_it_was_built_is_measured_again_once_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runners sharing a data home prune each other's environments: one measured while
    another runner built it (a few files, so far) is measured again once it is whole. Its
    size was kept as first measured, so that runner held the cap with the size of a venv
    that had only begun, for as long as it ran; a build script that waited before filling
    its venv made sure of it."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    venvs = _venvs(tmp_path, max_bytes=1 * MiB)
    _venv(venvs, "v_old", 100)
    building = venvs.root / "v_built"
    (building / "bin").mkdir(parents=True)  # another runner builds it: so far, this little
    lock = os.open(pyenv.lock_file(pyenv.Spec(building, "", "")), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        assert venvs.prune() == []  # (both under the cap)
        (building / "lib").mkdir()
        (building / "lib" / "big.so").write_bytes(b"x" * 2 * MiB)
        (building / pyenv.MARKER).write_text("{}")
    finally:
        os.close(lock)  # its build is done
    held = venvs.hold("v_built")  # a session runs on it
    assert held is not None
    try:
        assert venvs.prune() == ["v_old"]  # 2 MiB of v_built: over the cap
    finally:
        held.close()
