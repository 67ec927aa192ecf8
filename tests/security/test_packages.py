"""A project's packages never run as root.

A sandboxed runner installs a requirements.txt as a throwaway user that owns the venv while
pip runs, so whatever an installer does lands in the venv: here a wheel replaces the venv's
``bin/python`` with a script and ships a ``.pth`` file and a ``sitecustomize`` module, and
the test then rewrites the venv's copy of the SDK as an installer that raced the build could
have. Each leaves a file named after the user id that ran it. Sessions must still get the
package, and nothing of it may ever run as root (uid 0): not in the fork server that forks
workers, not in a worker started on its own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Stack, start_stack, write_project

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the worker sandbox needs the runner to run as root"
)

MANIFEST = """\
version: v1
project:
  name: pkgs
"""

HANDLERS = """\
import os
import subprocess
import sys

import autokitteh
import evilpkg


def probe(event):
    print("uid", os.getuid())
    print("evilpkg", evilpkg.VALUE)
    print("sdk", autokitteh.__file__)
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""

FIRST_WORKER_UID, LAST_WORKER_UID = 820000, 829999


def _mark(marks: Path, what: str) -> str:
    """Python that leaves ``<what>-<uid>-<pid>`` in ``marks``, holding the address-space
    limit it ran under."""
    name = f"'{what}-%d-%d' % (os.getuid(), os.getpid())"
    limit = "str(resource.getrlimit(resource.RLIMIT_AS)[0])"
    return f"import os, resource; open(os.path.join({str(marks)!r}, {name}), 'w').write({limit})\n"


def _base_python() -> str:
    """The interpreter the runner makes venvs from (the first python3 on PATH, resolved)."""
    found = shutil.which("python3")
    assert found, "no python3 on PATH"
    code = "import os, sys; print(os.path.realpath(sys._base_executable))"
    return subprocess.run([found, "-c", code], capture_output=True, text=True).stdout.strip()


def _wheel(dest: Path, marks: Path) -> None:
    """``evilpkg-1.0``: a package, a .pth file, a sitecustomize, and a script named
    ``python`` that pip puts in the venv's bin/ in place of its interpreter."""
    lines = ["#!/bin/bash", f'touch "{marks}/bin-python-$(id -u)-$$"']
    lines.append(f'exec -a "$0" {_base_python()} "$@"')  # on to the real one, as the venv's
    fake_python = "\n".join(lines) + "\n"
    entries = {
        "evilpkg/__init__.py": "VALUE = 42\n",
        "evilpkg.pth": _mark(marks, "pth"),
        "sitecustomize.py": _mark(marks, "sitecustomize"),
        "evilpkg-1.0.data/scripts/python": fake_python,
        "evilpkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n",
        "evilpkg-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = ""
    for name, text in entries.items():
        digest = hashlib.sha256(text.encode()).digest()
        b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record += f"{name},sha256={b64},{len(text.encode())}\n"
    entries["evilpkg-1.0.dist-info/RECORD"] = record + "evilpkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(dest / "evilpkg-1.0-py3-none-any.whl", "w") as zf:
        for name, text in entries.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | (0o755 if "/scripts/" in name else 0o644)) << 16
            zf.writestr(info, text)


@pytest.fixture(params=["1", "0"], ids=["forked", "started"])
def stack(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    # Not under pytest's own directory: the workers' users must reach their builds.
    home = Path(tempfile.mkdtemp(prefix="ak-packages-"))
    marks = home / "marks"
    marks.mkdir()
    marks.chmod(0o1777)  # every user leaves its marks here
    index = home / "index"
    index.mkdir()
    _wheel(index, marks)
    # pip (run by the runner as the builder) installs from the local wheel, not from PyPI.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    s = start_stack(home, {"AK_WORKER_PYTHON": "", "AK_RUNNER__FORK_WORKERS": request.param})
    s.marks = marks  # type: ignore[attr-defined]
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


def _who_ran(marks: Path) -> dict[str, set[int]]:
    """What left marks, by the user ids that ran it."""
    found: dict[str, set[int]] = {}
    for p in marks.iterdir():
        what, uid, _ = p.name.rsplit("-", 2)
        found.setdefault(what, set()).add(int(uid))
    return found


def test_a_projects_packages_never_run_as_root(stack: Stack, tmp_path: Path) -> None:
    marks: Path = stack.marks  # type: ignore[attr-defined]
    root = write_project(
        tmp_path / "pkgs",
        {
            "autokitteh.yaml": MANIFEST,
            "handlers.py": HANDLERS,
            "requirements.txt": "evilpkg\n",
        },
    )
    res, _ = stack.deploy(root)
    assert "is ready" in res.stderr, res.stderr
    venvs = Path(stack.env["XDG_DATA_HOME"]) / "autokitteh"
    [venv] = [p.parent.parent for p in venvs.rglob("bin/activate")]
    # The installer's script is the venv's interpreter now.
    assert (venv / "bin" / "python").read_text().startswith("#!/bin/bash")
    # What an installer racing the build could leave: the venv's SDK rewritten.
    [sdk] = list(venv.glob("lib/python*/site-packages/autokitteh"))
    for module in ("_zygote.py", "_worker.py", "__init__.py"):
        path = sdk / module
        path.write_text(_mark(marks, "venv-sdk") + path.read_text())

    started = stack.ak("session", "start", "-o", "pkgs", "-p", "handlers.py:probe", check=True)
    sid = started.stdout.strip().removeprefix("session_id: ")
    session = stack.wait_session(sid, timeout=60)
    prints = stack.ak("session", "prints", sid, "-n", check=True).stdout
    assert session["state"] == "COMPLETED", (session.get("error"), prints, _who_ran(marks))
    assert "evilpkg 42" in prints  # the package is there for the handler
    uid = int(prints.split("uid ", 1)[1].split()[0])
    assert FIRST_WORKER_UID <= uid <= LAST_WORKER_UID

    ran = _who_ran(marks)
    assert not any(0 in uids for uids in ran.values()), ran  # never root
    # The packages' start-up code ran, as the session's user: the environment is open.
    assert uid in ran["pth"] and uid in ran["sitecustomize"], ran
    assert uid in ran["bin-python"], ran  # the handler's own sys.executable, as itself
    assert "venv-sdk" not in ran, ran  # the worker's SDK is the runner's copy
    assert f"sdk {venvs}/runner/sdk/" in prints
    # The packages' code ran within the worker's limits (1024 MiB by default), not before.
    limits = {p.read_text() for p in marks.glob(f"pth-{uid}-*")}
    assert limits == {str(1024 << 20)}, limits
