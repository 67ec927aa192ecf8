"""A package list that asks pip to read a file, use another index or install from a path or
URL is refused before pip runs (issue 16: `-r /etc/passwd` printed a line of that file in
pip's error). The refusal names the line by number and shows nothing of the machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ak_runner.pyenv import EnvError, PythonEnvs, RequirementsError
from akcore import config

from tests.helpers import Stack, start_stack, write_project

PASSWD = [line for line in Path("/etc/passwd").read_text().splitlines() if line.strip()]

ATTACKS = {
    "a file": ("-r /etc/passwd", "is a pip option (-r)"),
    "another index": ("--index-url https://evil.example/simple", "is a pip option (--index-url)"),
    "a path": ("/etc/passwd", "is not a package requirement"),
    "a URL": ("https://evil.example/pkg-1.0.tar.gz", "is not a package requirement"),
    "a direct reference": ("pkg @ file:///etc/passwd", "installs from a URL or path (@)"),
    # (pip took it for a file in its working directory, the runner's, and named that)
    "an xz archive": ("pkg.tar.xz", "names an archive file"),
    "an lzma archive": ("pkg.tar.lzma", "names an archive file"),
    # (pip cuts a line at a word starting with -: the rest are its options)
    "an option in a marker": (
        "pkg; platform_release == 'x\" -r /etc/passwd \"y'",
        "has a marker value pip would read as an option or a comment (a word starting with - or #)",
    ),
}


def _shows_nothing_of_the_machine(text: str) -> None:
    assert not any(line in text for line in PASSWD), "a line of /etc/passwd was shown"


@pytest.fixture(autouse=True)
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
async def test_prepare_refuses_before_pip_runs(tmp_path: Path, attack: str) -> None:
    line, says = ATTACKS[attack]
    envs = PythonEnvs("", tmp_path / "sdk")
    with pytest.raises(RequirementsError) as e:
        await envs.prepare(f"six\n{line}\n".encode(), "", 0)
    assert e.value.kind == "invalid_argument"
    assert e.value.message.startswith(f"requirements.txt line 2 {says}; only package requirements")
    assert e.value.message.endswith(". Fix it and deploy again")
    _shows_nothing_of_the_machine(e.value.message)
    assert not config.project_venvs().exists()  # no environment was begun: pip never ran
    # A session of such a build (the check was skipped somehow) ends with the same words.
    with pytest.raises(EnvError, match="line 2"):
        await envs.python_for(f"six\n{line}\n".encode())
    # Given an interpreter (AK_WORKER_PYTHON), nothing is installed, and still it is refused.
    with pytest.raises(RequirementsError):
        await PythonEnvs("/usr/bin/python3", tmp_path / "sdk").prepare(line.encode(), "", 0)


async def test_the_default_package_list_is_checked_too(tmp_path: Path) -> None:
    config.python_requirements().parent.mkdir(parents=True)
    config.python_requirements().write_text("# mine\nrequests\n-r /etc/passwd\n")
    with pytest.raises(RequirementsError) as e:
        await PythonEnvs("", tmp_path / "sdk").prepare(None, "", 0)
    assert e.value.message.startswith(
        f"{config.python_requirements()} line 3 is a pip option (-r); only package requirements"
    )
    assert not config.default_venv().exists()


MANIFEST = """\
version: v1
project:
  name: pipattack
  triggers:
    - name: hook
      webhook: {}
      call: h.py:on_hook
"""


@pytest.fixture(scope="module")
def venv_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Workers in venvs built by pip (AK_WORKER_PYTHON unset), as in production."""
    s = start_stack(tmp_path_factory.mktemp("pipattack"), {"AK_WORKER_PYTHON": ""})
    yield s
    s.stop()


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
def test_ak_deploy_shows_the_refusal_and_nothing_of_the_machine(
    venv_stack: Stack, tmp_path: Path, attack: str
) -> None:
    line, says = ATTACKS[attack]
    files = {"autokitteh.yaml": MANIFEST, "h.py": "def on_hook(event): pass\n"}
    proj = write_project(tmp_path / "p", {**files, "requirements.txt": f"six\n{line}\n"})
    res = venv_stack.ak("deploy", "--manifest", str(proj / "autokitteh.yaml"))
    assert res.returncode == 40, res.stderr
    assert f"requirements.txt line 2 {says}; only package requirements" in res.stderr
    assert "[pyenv]" not in res.stderr  # pip never ran
    _shows_nothing_of_the_machine(res.stdout + res.stderr + venv_stack.output())
    assert "pipattack" not in venv_stack.ak("project", "list").stdout  # nothing was changed
