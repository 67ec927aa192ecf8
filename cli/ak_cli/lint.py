"""``ak project lint``'s checks, on a manifest and the files a deploy would upload (no I/O).

Each violation is (file, level, message), printed as AutoKitteh prints them:
``<file>:<line> - <LEVEL> - <message>``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from akcore.errors import AKError
from akcore.manifest import Manifest, parse_call, parse_manifest

ERROR, WARNING = "ERROR", "WARNING"
MAX_FILES = 1024


@dataclass(frozen=True)
class Violation:
    file: str
    level: str
    message: str
    line: int = 0

    def text(self) -> str:
        return f"{self.file}:{self.line} - {self.level} - {self.message}"


def _top_level_names(tree: ast.Module) -> set[str]:
    """Functions and classes defined at a module's top level (what a trigger may call)."""
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in tree.body if isinstance(node, kinds)}


def lint(manifest_name: str, text: str, files: dict[str, bytes]) -> list[Violation]:
    """The problems of a project: the manifest valid, each ``call`` naming a file that
    exists and a function defined at its top level, every Python file compiling; warnings
    for empty var values and a project without triggers."""
    out: list[Violation] = []
    if len(files) > MAX_FILES:
        out.append(Violation(manifest_name, ERROR, f"too many files ({len(files)} > {MAX_FILES})"))
    trees: dict[str, ast.Module | None] = {}
    for path in sorted(files):
        if not path.endswith(".py"):
            continue
        try:
            trees[path] = ast.parse(files[path], filename=path)
        except (SyntaxError, ValueError) as e:
            trees[path] = None
            line = getattr(e, "lineno", 0) or 0
            out.append(Violation(path, ERROR, f"cannot parse: {e}", line))
    try:
        m = parse_manifest(text)
    except AKError as e:
        return [*out, Violation(manifest_name, ERROR, e.message)]
    return out + _manifest_checks(manifest_name, m, trees)


def _manifest_checks(
    name: str, m: Manifest, trees: dict[str, ast.Module | None]
) -> list[Violation]:
    out: list[Violation] = []
    p = m.project
    if p is None:
        return [Violation(name, ERROR, "the manifest has no project")]
    for v in p.vars:
        if not v.value:
            out.append(Violation(name, WARNING, f'project variable "{v.name}" is empty'))
    for c in p.connections:
        for v in c.vars:
            if not v.value:
                out.append(
                    Violation(name, WARNING, f'connection "{c.name}" variable "{v.name}" is empty')
                )
    if not p.triggers:
        out.append(Violation(name, WARNING, "no triggers"))
    for t in p.triggers:
        if not t.call:
            continue
        path, func = parse_call(t.call)
        where = f'trigger "{t.name}"'
        if path not in trees:
            out.append(Violation(name, ERROR, f'{where}: file "{path}" not found'))
            continue
        tree = trees[path]
        if tree is not None and func not in _top_level_names(tree):
            out.append(Violation(name, ERROR, f'{where}: function "{func}" not found in "{path}"'))
    return out
