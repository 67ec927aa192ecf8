"""Loads the user's modules, rewriting calls inside function and class bodies to go through
the activity gate (``_ak_call(f, ...)``, ``await _ak_async_call(f, ...)``). Module-level code
is left as written."""

from __future__ import annotations

import ast
import builtins
import functools
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType
from typing import Any

CALL = "_ak_call"
ASYNC_CALL = "_ak_async_call"
_BUILTIN_NAMES = frozenset(dir(builtins)) | {CALL, ASYNC_CALL}


class Instrumenter(ast.NodeTransformer):
    """Rewrites calls, but only where ``depth`` says we are inside a def, lambda or class body."""

    def __init__(self) -> None:
        self.depth = 0

    def _body(self, node: ast.AST, fields: Sequence[str]) -> ast.AST:
        for name in node._fields:
            value = getattr(node, name)
            inner = name in fields
            self.depth += inner
            if isinstance(value, list):
                setattr(node, name, [self.visit(v) if isinstance(v, ast.AST) else v for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, name, self.visit(value))
            self.depth -= inner
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return self._body(node, ("body",))

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._body(node, ("body",))

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return self._body(node, ("body",))

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        return self._body(node, ("body",))

    def _skip(self, node: ast.Call) -> bool:
        return self.depth == 0 or (
            isinstance(node.func, ast.Name) and node.func.id in _BUILTIN_NAMES
        )

    def _wrap(self, node: ast.Call, gate: str) -> ast.Call:
        return ast.Call(
            func=ast.Name(gate, ast.Load()), args=[node.func, *node.args], keywords=node.keywords
        )

    def visit_Await(self, node: ast.Await) -> ast.AST:
        call = node.value
        if isinstance(call, ast.Call) and not self._skip(call):
            self.generic_visit(call)
            node.value = self._wrap(call, ASYNC_CALL)
            return node
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        return node if self._skip(node) else self._wrap(node, CALL)


def instrument(source: bytes | str, path: str) -> CodeType:
    tree = ast.parse(source, path)
    tree = ast.fix_missing_locations(Instrumenter().visit(tree))
    return compile(tree, path, "exec", dont_inherit=True)


_compiled: dict[tuple[str, int, int], CodeType] = {}

# Where a module file really is, asked at every import a session makes (the files of a
# build and of the interpreter do not move while a worker lives).
real_path = functools.lru_cache(maxsize=4096)(os.path.realpath)


class _Loader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname: str, path: str, gates: dict[str, Any]) -> None:
        super().__init__(fullname, path)
        self._gates = gates

    def get_code(self, fullname: str) -> CodeType:
        # Never use or write cached bytecode: the same file runs uninstrumented elsewhere.
        # A worker that runs several sessions keeps what it compiled (code objects are
        # immutable; each import still runs the module anew).
        st = os.stat(self.path)
        key = (self.path, st.st_mtime_ns, st.st_size)
        code = _compiled.get(key)
        if code is None:
            code = _compiled[key] = instrument(self.get_data(self.path), self.path)
        return code

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__.update(self._gates)
        super().exec_module(module)


class UserCodeFinder:
    """Serves every ``.py`` module under ``code_dir`` through the instrumenting loader (a
    meta path finder by its ``find_spec``; ``importlib.abc`` is not imported for its base
    class, it pulls in ``importlib.resources`` and a tenth of the worker's start)."""

    def __init__(self, code_dir: str, gates: dict[str, Any]) -> None:
        self.code_dir = code_dir + os.sep
        self.gates = gates
        self.modules: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        origin = spec.origin if spec else None
        if spec is None or not origin or not origin.endswith(".py"):
            return None
        if not real_path(origin).startswith(self.code_dir):
            return None
        spec.loader = _Loader(fullname, origin, self.gates)
        self.modules.add(fullname)
        return spec

    def install(self) -> None:
        sys.meta_path.insert(0, self)
