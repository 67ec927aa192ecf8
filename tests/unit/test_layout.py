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


def _imports(pkg_dir: Path, skip: frozenset[str] = frozenset()) -> set[str]:
    found: set[str] = set()
    for f in pkg_dir.rglob("*.py"):
        if f.stem in skip:
            continue
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


# The SDK's client helpers (autokitteh.github, .slack, ...), each importing its own client
# package, and what they import: modules a handler imports only to use that package.
CLIENT_HELPERS = {
    "airtable": {"pyairtable"},
    "anthropic": {"anthropic", "pydantic_ai"},  # (pydantic_ai inside one helper only)
    "asana": {"asana"},
    "atlassian": {"atlassian"},
    "aws": {"boto3"},
    "discord": {"discord"},
    "github": {"github"},
    "google": {"google", "googleapiclient", "pydantic_ai"},  # (pydantic_ai: one helper)
    "kubernetes": {"kubernetes"},
    "linear": {"requests"},
    "notion": {"notion_client"},
    "oauth2_session": {"requests_toolbelt"},
    "openai": {"openai", "pydantic_ai"},
    "pipedrive": {"pipedrive"},
    "reddit": {"praw"},
    "slack": {"slack_sdk"},
    "telegram": {"telegram"},
    "twilio": {"twilio"},
}


def test_sdk_uses_only_the_standard_library() -> None:
    """``import autokitteh`` works in any Python 3.11+: the SDK but its client helpers
    imports only the standard library, and imports none of the helpers itself."""
    import sys

    helpers = frozenset(CLIENT_HELPERS) | {"_helpers"}
    imported = _imports(PACKAGES["autokitteh"], helpers) - {"autokitteh", "__future__"}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    for name, wanted in CLIENT_HELPERS.items():
        text = (PACKAGES["autokitteh"] / f"{name}.py").read_text()
        module_imports: set[str] = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                module_imports |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                module_imports.add(node.module.split(".")[0])
        others = module_imports - wanted - set(sys.stdlib_module_names) - {"__future__"}
        assert not others, f"autokitteh.{name} imports {others}"


SUBJECT_RE = re.compile(r"[\"']ak\.(events|jobs|journal|inbox|store|health|runner)\b")


def test_subjects_spelled_once() -> None:
    offenders = [
        str(f.relative_to(ROOT))
        for base in ("libs", "services", "cli")
        for f in (ROOT / base).rglob("*.py")
        if f.name != "subjects.py" and SUBJECT_RE.search(f.read_text())
    ]
    assert offenders == []


def _calls(tree: ast.AST) -> set[tuple[str, str]]:
    """``(owner, name)`` of every call in ``tree``: ``bus.connect(...)`` is ``("bus",
    "connect")``, ``Client()`` is ``("", "Client")``."""
    found: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if isinstance(fn, ast.Name):
            found.add(("", fn.id))
        elif isinstance(fn, ast.Attribute):
            found.add((fn.value.id if isinstance(fn.value, ast.Name) else "", fn.attr))
    return found


@pytest.mark.parametrize("pkg", sorted(SERVICES))
def test_services_connect_to_nats_one_way(pkg: str) -> None:
    """A service's NATS connections all come from ``bus.connect_service``, in a process
    ``akcore.service.main`` runs: one closed for good then ends the process, which its
    supervisor restarts. One made another way would leave the service up without NATS,
    serving nothing (docs/reliability.md)."""
    calls = set().union(*(_calls(ast.parse(f.read_text())) for f in PACKAGES[pkg].rglob("*.py")))
    assert ("bus", "connect_service") in calls
    others = {
        (owner, name)
        for owner, name in calls
        if name in ("Client", "CancellableClient")
        or (owner in ("bus", "nats") and name == "connect")
    }
    assert not others, f"{pkg} connects to NATS by {others}"
    entry = ast.parse((PACKAGES[pkg] / "__main__.py").read_text())
    imported = {
        (n.module, a.name)
        for n in ast.walk(entry)
        if isinstance(n, ast.ImportFrom)
        for a in n.names
    }
    assert ("akcore.service", "main") in imported and ("", "main") in _calls(entry)
