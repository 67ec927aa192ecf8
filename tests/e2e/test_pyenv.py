"""Python environments built by `ak deploy`: the default venv, a venv per requirements.txt,
a failing install, AK_WORKER_PYTHON, and the SDK in a plain venv for local development.

These build real virtual environments with packages from PyPI (small ones: `six`, `tabulate`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import AK, Stack, start_stack, webhook_paths, write_project

MANIFEST = """\
version: v1
project:
  name: {name}
  triggers:
    - name: hook
      webhook: {{}}
      call: handlers.py:{fn}
"""

DEFAULT_HANDLERS = """\
import sys

import autokitteh
import six


def where(event):
    print("prefix:", sys.prefix)
    print("sdk:", autokitteh.__file__)
    print("six:", six.__version__)
"""

PROJECT_HANDLERS = """\
import sys

from tabulate import tabulate


def table(event):
    print("prefix:", sys.prefix)
    print(tabulate([["a", 1]], tablefmt="plain"))


def needs_six(event):
    import six  # in the default environment, not in this project's
"""


@pytest.fixture(scope="module")
def venv_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("pyenv")
    cfg = home / "config" / "autokitteh"
    cfg.mkdir(parents=True)
    # The user-editable default package list: one small package instead of the seed's list.
    (cfg / "python-requirements.txt").write_text("# default packages\nsix\nautokitteh ~= 0.2\n")
    s = start_stack(home, {"AK_WORKER_PYTHON": ""})
    yield s
    s.stop()


def _data(stack: Stack) -> Path:
    return Path(stack.env["XDG_DATA_HOME"]) / "autokitteh"


def _run(stack: Stack, project: str, path: str) -> tuple[dict[str, str], str]:
    status, headers, _ = stack.request("POST", path, b"{}")
    assert status == 202
    sid = stack.session_of(project, headers["autokitteh-event-id"])
    s = stack.wait_session(sid, timeout=60)
    return s, stack.ak("session", "prints", sid, "-n", check=True).stdout


def test_default_environment_built_on_first_deploy_then_reused(
    venv_stack: Stack, tmp_path: Path
) -> None:
    root = write_project(
        tmp_path / "p",
        {
            "autokitteh.yaml": MANIFEST.format(name="pyenv_default", fn="where"),
            "handlers.py": DEFAULT_HANDLERS,
        },
    )
    res, path = venv_stack.deploy(root)
    venv = _data(venv_stack) / "venv"
    assert f"[pyenv] creating the default environment at {venv} with " in res.stderr
    assert "Successfully installed six" in res.stderr  # pip's progress, shown while it builds
    assert "[pyenv] skipping 'autokitteh ~= 0.2': the SDK comes from this server" in res.stderr
    assert f"[pyenv] the default environment is ready: {venv}/bin/python" in res.stderr
    assert "[pyenv]" not in res.stdout  # stdout keeps AutoKitteh's deploy transcript
    assert res.stdout.splitlines()[-1] == "[exec] activate_deployment: activated"

    s, prints = _run(venv_stack, "pyenv_default", path)
    assert s["state"] == "COMPLETED", prints
    assert f"prefix: {venv}\n" in prints
    if os.geteuid() == 0:  # sandboxed: the root runner's own copy, never a file of the venv
        assert f"sdk: {_data(venv_stack)}/runner/sdk/" in prints
    else:  # the SDK is installed in the venv, not borrowed
        assert f"sdk: {venv}/lib/" in prints
    assert "six: 1." in prints

    again, _ = venv_stack.deploy(root)  # later deploys reuse it
    assert "[pyenv]" not in again.stderr

    shown = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "show", "autokitteh"],
        capture_output=True,
        text=True,
    )
    assert "Name: autokitteh" in shown.stdout  # so IDEs and `pip install` see it


def test_edited_default_list_is_installed_on_next_deploy(venv_stack: Stack, tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "p",
        {
            "autokitteh.yaml": MANIFEST.format(name="pyenv_edit", fn="where"),
            "handlers.py": DEFAULT_HANDLERS,
        },
    )
    venv_stack.deploy(root)
    cfg = Path(venv_stack.env["XDG_CONFIG_HOME"]) / "autokitteh" / "python-requirements.txt"
    cfg.write_text(cfg.read_text() + "tabulate==0.9.0\n")
    res, _ = venv_stack.deploy(root)
    assert f"[pyenv] updating the default environment at {_data(venv_stack) / 'venv'}" in (
        res.stderr
    )
    assert "Successfully installed tabulate-0.9.0" in res.stderr


def test_requirements_txt_gets_its_own_environment(venv_stack: Stack, tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "p",
        {
            "autokitteh.yaml": MANIFEST.format(name="pyenv_req", fn="table")
            + "    - name: six\n      webhook: {}\n      call: handlers.py:needs_six\n",
            "handlers.py": PROJECT_HANDLERS,
            "requirements.txt": "tabulate==0.9.0\n",
        },
    )
    res = venv_stack.ak("deploy", "--manifest", str(root / "autokitteh.yaml"), check=True)
    venvs = _data(venv_stack) / "venvs"
    assert "[pyenv] creating requirements.txt " in res.stderr
    assert f" at {venvs}/" in res.stderr
    paths = webhook_paths(res.stderr)
    s, prints = _run(venv_stack, "pyenv_req", paths["hook"])
    assert s["state"] == "COMPLETED", prints
    assert f"prefix: {venvs}/" in prints
    assert "a  1" in prints

    # Only what requirements.txt lists: `six` of the default environment is not there.
    s, prints = _run(venv_stack, "pyenv_req", paths["six"])
    assert s["state"] == "ERROR"
    assert "Hint: no module 'six'" in prints
    assert "Add the package that provides it to the project's requirements.txt" in prints

    # A failing install fails the deploy, shows pip's error, and changes nothing.
    before = venv_stack.ak("deployment", "list", "-p", "pyenv_req", "-j", check=True).stdout
    (root / "requirements.txt").write_text("tabulate==0.9.0\nak-no-such-package-e2e==9.9.9\n")
    (root / "handlers.py").write_text("def table(event):\n    print('new code')\n")
    bad = venv_stack.ak("deploy", "--manifest", str(root / "autokitteh.yaml"))
    assert bad.returncode == 1
    assert "No matching distribution found for ak-no-such-package-e2e==9.9.9" in bad.stderr
    assert bad.stderr.endswith(
        "Error: the Python environment could not be built: pip install failed (exit code 1). "
        "Fix requirements.txt and deploy again (pip's output is above). "
        "Nothing was changed: the previous deployment stays active\n"
    )
    assert "create_deployment" not in bad.stdout
    after = venv_stack.ak("deployment", "list", "-p", "pyenv_req", "-j", check=True).stdout
    assert after == before
    s, prints = _run(venv_stack, "pyenv_req", paths["hook"])
    assert "a  1" in prints and "new code" not in prints


def test_project_environments_are_bounded_on_disk_and_built_again_when_needed(
    tmp_path: Path,
) -> None:
    """AK_RUNNER__VENVS_MB: past it, the environments no session runs on are removed after
    each build (least recently used first); a session whose environment went builds it
    again, and one running on its environment keeps it."""
    home = tmp_path / "home"
    (home / "config" / "autokitteh").mkdir(parents=True)
    stack = start_stack(
        home,
        # 1 MiB: every environment no session needs goes as soon as another is built.
        {"AK_WORKER_PYTHON": "", "AK_RUNNER__VENVS_MB": "1", "AK_RUNNER__PARK_AFTER": "off"},
    )
    try:
        venvs = _data(stack) / "venvs"
        handlers = (
            "import time\n"
            + PROJECT_HANDLERS
            + "\n\ndef wait(event):\n    print('waiting')\n    time.sleep(3600)\n"
        )
        tables = write_project(
            tmp_path / "tables",
            {
                "autokitteh.yaml": MANIFEST.format(name="venv_tables", fn="table")
                + "    - name: wait\n      webhook: {}\n      call: handlers.py:wait\n",
                "handlers.py": handlers,
                "requirements.txt": "tabulate==0.9.0\n",
            },
        )
        other = write_project(
            tmp_path / "other",
            {
                "autokitteh.yaml": MANIFEST.format(name="venv_other", fn="where"),
                "handlers.py": DEFAULT_HANDLERS,
                "requirements.txt": "six\n",
            },
        )
        res = stack.ak("deploy", "--manifest", str(tables / "autokitteh.yaml"), check=True)
        paths = webhook_paths(res.stderr)
        (tables_env,) = [p.name for p in venvs.iterdir() if not p.name.startswith(".")]
        stack.ak("deploy", "--manifest", str(other / "autokitteh.yaml"), check=True)
        # Building the other project's removed this one's: no session ran on it.
        (other_env,) = [p.name for p in venvs.iterdir() if not p.name.startswith(".")]
        assert other_env != tables_env
        assert not (venvs / f".{tables_env}.python").exists()
        stack.wait_until(
            lambda: f"removed 1 project environments: {tables_env}" in stack.output(),
            "the runner's log of the removal",
        )

        # Its next session builds it again (and removes the other), and runs on it.
        s, prints = _run(stack, "venv_tables", paths["hook"])
        assert s["state"] == "COMPLETED", prints
        assert f"prefix: {venvs / tables_env}\n" in prints and "a  1" in prints
        assert sorted(p.name for p in venvs.iterdir()) == [f".{tables_env}.python", tables_env]

        # A session running on it keeps it through another project's build.
        status, headers, _ = stack.request("POST", paths["wait"], b"{}")
        assert status == 202
        sid = stack.session_of("venv_tables", headers["autokitteh-event-id"])
        stack.wait_until(
            lambda: "waiting" in stack.ak("session", "prints", sid, "-n").stdout,
            "the waiting session's print",
        )
        stack.ak("deploy", "--manifest", str(other / "autokitteh.yaml"), check=True)
        assert sorted(p.name for p in venvs.iterdir()) == sorted(
            [f".{tables_env}.python", tables_env, f".{other_env}.python", other_env]
        )
        stack.ak("session", "stop", sid, check=True)
        assert stack.wait_session(sid)["state"] == "STOPPED"
    finally:
        stack.stop()


def test_worker_python_skips_venvs(stack: Stack, tmp_path: Path) -> None:
    # `stack` is the plain test stack: the test helper sets AK_WORKER_PYTHON.
    root = write_project(
        tmp_path / "p",
        {
            "autokitteh.yaml": MANIFEST.format(name="pyenv_given", fn="where"),
            "handlers.py": "import sys\n\ndef where(event):\n    print(sys.executable)\n",
            "requirements.txt": "tabulate\n",
        },
    )
    res, path = stack.deploy(root)
    assert (
        "[!!!!] AK_WORKER_PYTHON is set: requirements.txt is not installed, "
        f"handlers run on {sys.executable}"
    ) in res.stderr
    s, prints = _run(stack, "pyenv_given", path)
    assert prints.strip() == sys.executable
    assert not (_data(stack) / "venv").exists()
    assert not (_data(stack) / "venvs").exists()


def test_sdk_in_a_plain_venv_for_local_development(tmp_path: Path) -> None:
    wheel = subprocess.run(
        [AK, "sdk", "wheel", "-o", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(wheel).name.startswith("autokitteh-") and wheel.endswith("-py3-none-any.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-index", "--disable-pip-version-check", wheel],
        check=True,
    )
    proj = write_project(
        tmp_path / "proj",
        {
            "handler.py": 'def on_event(event):\n    print("BODY:", event.data.body.decode())\n',
            # The seed's snippet, verbatim.
            "run.py": (
                "from autokitteh import AttrDict\n"
                "import handler\n\n"
                "# AutoKitteh events are instances of autokitth.AttrDict\n"
                'event = AttrDict({"data": {"body": "hello".encode()}})\n'
                "handler.on_event(event)\n"
            ),
            "standins.py": (
                "import autokitteh\n"
                "sub = autokitteh.subscribe('hook')\n"
                "print(autokitteh.next_event(sub, timeout=1))\n"
            ),
        },
    )
    out = subprocess.run([py, "run.py"], cwd=proj, capture_output=True, text=True, check=True)
    assert out.stdout == "BODY: hello\n"
    out = subprocess.run([py, "standins.py"], cwd=proj, capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "None\n"), out.stderr
    meta = subprocess.run(
        [
            py,
            "-c",
            "import importlib.metadata as m, json; print(json.dumps(m.version('autokitteh')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(meta.stdout)
