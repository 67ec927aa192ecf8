"""Package boundaries: a service never imports another service; libs import no service."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SERVICES = {
    "ak_ingress": "ingress",
    "ak_dispatcher": "dispatcher",
    "ak_runner": "runner",
    "ak_store": "store",
}
PACKAGES = {
    **{pkg: ROOT / "services" / d for pkg, d in SERVICES.items()},
    "akcore": ROOT / "libs" / "akcore",
    "autokitteh": ROOT / "libs" / "autokitteh",
    "ak_cli": ROOT / "cli" / "ak_cli",
}


def _imports(pkg_dir: Path) -> set[str]:
    found: set[str] = set()
    for f in pkg_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_boundaries(pkg: str) -> None:
    imported = _imports(PACKAGES[pkg])
    other_services = set(SERVICES) - {pkg}
    assert not imported & other_services, f"{pkg} imports {imported & other_services}"
    if pkg in ("akcore", "autokitteh", "ak_cli"):
        assert not imported & set(SERVICES)


def test_sdk_uses_only_the_standard_library() -> None:
    import sys

    imported = _imports(PACKAGES["autokitteh"]) - {"autokitteh", "__future__"}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


SUBJECT_RE = re.compile(r"[\"']ak\.(events|jobs|journal|inbox|store|health|runner)\b")


def test_subjects_spelled_once() -> None:
    offenders = [
        str(f.relative_to(ROOT))
        for base in ("libs", "services", "cli")
        for f in (ROOT / base).rglob("*.py")
        if f.name != "subjects.py" and SUBJECT_RE.search(f.read_text())
    ]
    assert offenders == []
