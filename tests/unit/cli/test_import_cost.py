"""`ak`'s client commands import only what they use: no CEL, no service code, no pydantic.

Start-up is most of a command's wall time (docs/benchmarks-notes.md, "A fast CLI"); these
tests catch a module-level import that would bring the heavy modules back, without timing
anything: each runs the real entry point in a fresh interpreter and reads ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port

# Modules no client command needs: CEL (and its parser), the store's ORM, the services'
# web framework, NATS, telemetry's SDK, pydantic (typer's coercion, see ak_cli.coercion),
# and the services themselves.
HEAVY = (
    "celpy",
    "lark",
    "akcore.cel",
    "sqlmodel",
    "sqlalchemy",
    "fastapi",
    "starlette",
    "nats",
    "opentelemetry.sdk",
    "pydantic",
    "ak_ingress",
    "ak_store",
    "ak_dispatcher",
    "ak_runner",
)

# Runs `ak ARGS` in this interpreter and prints the modules it loaded (and its exit code).
PROBE = """
import json, sys
sys.argv = ["ak", *json.loads(sys.argv[1])]
from ak_cli.main import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded(args: list[str], home: Path) -> tuple[int, str, set[str]]:
    """The exit code and error output of ``ak args``, and the modules it imported; the
    server it calls listens nowhere, so each call fails after the command is set up."""
    env = {
        "PATH": "/usr/bin:/bin",
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "AK_HTTP__SERVICE_URL": f"http://127.0.0.1:{free_port()}",
    }
    res = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(res.stdout.rsplit("\n", 2)[-2])
    return report["code"], res.stderr, set(report["modules"])


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    "args",
    [
        ["session", "list"],
        ["ses", "list", "-p", "x", "--page-size", "5", "-j"],
        ["session", "get", "ses_x"],
        ["project", "list"],
        ["deployment", "list"],
        ["trigger", "list"],
        ["event", "list"],
        ["var", "get", "-p", "x"],
        ["build", "list", "-p", "x"],
        ["connection", "list"],
        ["-C", "timeout=5s", "session", "list"],
    ],
)
def test_a_client_command_imports_no_heavy_module(args: list[str], tmp_path: Path) -> None:
    code, err, modules = loaded(args, tmp_path)
    assert code == 1
    assert err.startswith("Error: cannot reach the server at http://127.0.0.1:")
    assert heavy_in(modules) == []


def test_version_and_help_import_no_heavy_module(tmp_path: Path) -> None:
    """``ak --help`` loads every noun's module: none of them imports a heavy one at load."""
    for args in (["version"], ["--help"], ["session", "--help"]):
        code, _, modules = loaded(args, tmp_path)
        assert code == 0, args
        assert heavy_in(modules) == [], args


def test_a_command_loads_only_its_own_noun(tmp_path: Path) -> None:
    *_, modules = loaded(["session", "list"], tmp_path)
    assert "ak_cli.sessions" in modules
    assert {"ak_cli.projects", "ak_cli.connections", "ak_cli.up", "ak_cli.deploy"}.isdisjoint(
        modules
    )


def test_cel_is_imported_by_the_command_that_evaluates_it(tmp_path: Path) -> None:
    code, _, modules = loaded(["event", "verify-filter", "data.x == 1"], tmp_path)
    assert code == 0
    assert "akcore.cel" in modules


def test_a_value_plain_coercion_does_not_know_gets_typers_error(tmp_path: Path) -> None:
    """``--page-size ten`` is refused as typer refuses it (exit 2, its message)."""
    env = {"XDG_CONFIG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    ak = str(Path(sys.executable).parent / "ak")
    res = subprocess.run(
        [ak, "session", "list", "--page-size", "ten"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "Invalid value for '--page-size': Input should be a valid integer" in res.stderr
