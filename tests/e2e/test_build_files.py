"""What a build may hold and where it lives on disk, end to end: `ak deploy` and `ak build
upload` refused over the limits or with unsafe file names, a build stored unchecked refused
by the runner, `ak build download` and `ak project export`, and the runner's unpacked builds
removed once no session uses them (but never while one does)."""

from __future__ import annotations

import io
import re
import sqlite3
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from akcore import wire
from akcore.buildfiles import MAX_BUILD_FILES

from tests.helpers import Stack, start_stack, wait_until, write_project

MANIFEST = """\
version: v2
project:
  name: {name}
  triggers:
    - name: hook
      webhook: {{}}
      call: h.py:on_hook
"""
# Waits, holding its build, until the test lets it go; then reads a file of its build.
HELD = """\
import os
import threading


def on_hook(event):
    marks = os.environ["BUILD_TEST_MARKS"]
    open(os.path.join(marks, "started"), "w").close()
    while not os.path.exists(os.path.join(marks, "go")):
        threading.Event().wait(0.05)
    print(open("data.txt").read())
"""
QUICK = """\
def on_hook(event):
    print(open("data.txt").read())
"""


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, marks: Path) -> Iterator[Stack]:
    env = {"AK_RUNNER__BUILD_CACHE_IDLE": "1", "BUILD_TEST_MARKS": str(marks)}
    s = start_stack(tmp_path_factory.mktemp("stack"), env)
    yield s
    s.stop()


def _deploy(stack: Stack, root: Path, name: str, code: str) -> tuple[str, str]:
    """Deploys a project of ``code`` (and a data.txt); returns its build id and webhook."""
    files = {"autokitteh.yaml": MANIFEST.format(name=name), "h.py": code, "data.txt": name}
    res, hook = stack.deploy(write_project(root / name, files))
    found = re.search(r'create_build: created "(bld_\w{26})"', res.stdout)
    assert found is not None, res.stdout
    return found.group(1), hook


def _unpacked(stack: Stack, build_id: str) -> Path:
    return Path(stack.env["XDG_DATA_HOME"]) / "autokitteh" / "runner" / "builds" / build_id


def _run(stack: Stack, project: str, hook: str) -> str:
    status, event_id = stack.post_json(hook, {})
    assert status == 202
    return stack.session_of(project, event_id)


def test_unpacked_builds_go_once_unused_never_while_a_session_runs(
    stack: Stack, tmp_path: Path, marks: Path
) -> None:
    held_build, held_hook = _deploy(stack, tmp_path, "heldbuild", HELD)
    quick_build, quick_hook = _deploy(stack, tmp_path, "quickbuild", QUICK)
    held = _run(stack, "heldbuild", held_hook)
    wait_until(lambda: (marks / "started").exists(), "the held session to start")
    # A session used the quick build after the held one began: once the quick build is
    # removed as unused (AK_RUNNER__BUILD_CACHE_IDLE=1), the held one was past that too.
    assert stack.wait_session(_run(stack, "quickbuild", quick_hook))["state"] == "COMPLETED"
    wait_until(lambda: not _unpacked(stack, quick_build).exists(), "the quick build removed")
    assert (_unpacked(stack, held_build) / "data.txt").read_text() == "heldbuild"

    (marks / "go").touch()
    assert stack.wait_session(held)["state"] == "COMPLETED"
    prints = stack.ak("session", "prints", held, "-n", check=True).stdout
    assert prints.strip() == "heldbuild"
    wait_until(lambda: not _unpacked(stack, held_build).exists(), "the held build removed")
    # Removed from disk is not gone: the next session unpacks the build again.
    again = _run(stack, "quickbuild", quick_hook)
    assert stack.wait_session(again)["state"] == "COMPLETED"
    assert stack.ak("session", "prints", again, "-n", check=True).stdout.strip() == "quickbuild"


def test_ak_deploy_refuses_too_many_files_before_changing_anything(
    stack: Stack, tmp_path: Path
) -> None:
    files = {"autokitteh.yaml": MANIFEST.format(name="manyfiles"), "h.py": QUICK}
    files |= {f"d{i // 1000}/{i}": "x" for i in range(MAX_BUILD_FILES)}
    res = stack.ak("deploy", "--manifest", str(write_project(tmp_path, files) / "autokitteh.yaml"))
    assert res.returncode == 40
    assert res.stderr == (
        "Error: the build has 10,001 files, over the limit of 10,000: upload only the "
        "project's code with --file/--dir (packages go in requirements.txt)\n"
    )
    assert stack.ak("project", "get", "manyfiles").returncode == 44


def test_ak_build_upload_refuses_a_name_outside_the_build(stack: Stack, tmp_path: Path) -> None:
    _deploy(stack, tmp_path, "uploads", QUICK)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {
            "version.txt": b"=^.^= autokitteh-nats-build-file-v1\n",
            "resources/h.py": QUICK.encode(),
            "resources/../../evil.py": b"x",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "evil.akb").write_bytes(buf.getvalue())
    res = stack.ak("build", "upload", str(tmp_path / "evil.akb"), "-p", "uploads")
    assert res.returncode == 40
    assert res.stderr == (
        "Error: invalid build: file name '../../evil.py' is not a plain relative path "
        "(no empty, . or .. parts)\n"
    )
    assert len(stack.ak("build", "list", "-p", "uploads", check=True).stdout.splitlines()) == 1


def test_a_build_stored_unchecked_is_neither_run_nor_written_out(
    stack: Stack, tmp_path: Path
) -> None:
    """A build stored before names were checked (made here by writing its row)."""
    build_id, hook = _deploy(stack, tmp_path, "unchecked", QUICK)
    files = {"h.py": QUICK.encode(), "data.txt": b"x", "../../escape.py": b"x"}
    db = sqlite3.connect(Path(stack.env["XDG_DATA_HOME"]) / "autokitteh" / "autokitteh.sqlite")
    with db:
        db.execute("UPDATE build SET files = ? WHERE build_id = ?", (wire.pack(files), build_id))
    db.close()
    problem = "file name '../../escape.py' is not a plain relative path (no empty, . or .. parts)"

    out = tmp_path / "out"
    out.mkdir()
    res = stack.ak("build", "download", build_id, "-o", str(out / "b.akb"))
    assert (res.returncode, res.stderr) == (
        40,
        f"Error: refusing to write the build file: {problem}\n",
    )
    res = stack.ak("project", "export", "unchecked", "-o", str(out / "p.zip"))
    assert (res.returncode, res.stderr) == (40, f"Error: refusing to write the zip: {problem}\n")
    res = stack.ak("project", "download", "unchecked", "-o", str(out))
    assert res.returncode == 40 and problem in res.stderr
    assert list(out.iterdir()) == []

    session = stack.wait_session(_run(stack, "unchecked", hook))
    assert session["state"] == "ERROR"
    assert (
        session["error"] == f"error: could not prepare the session's code: invalid build: {problem}"
    )
    assert not list(Path(stack.env["XDG_DATA_HOME"]).rglob("escape.py"))
