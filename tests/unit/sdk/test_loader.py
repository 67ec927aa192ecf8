"""The AST rewrite: calls inside function and class bodies go through the gate."""

from __future__ import annotations

import ast

from autokitteh._loader import Instrumenter


def rewrite(src: str) -> str:
    return ast.unparse(ast.fix_missing_locations(Instrumenter().visit(ast.parse(src))))


def test_module_level_is_untouched() -> None:
    src = "x = f(1)\nprint(g())\n"
    assert rewrite(src) == "x = f(1)\nprint(g())"


def test_calls_in_functions() -> None:
    out = rewrite("def h(e):\n    y = f(a, *b, k=g(1), **kw)\n    print(len(y))\n")
    assert out == (
        "def h(e):\n    y = _ak_call(f, a, *b, k=_ak_call(g, 1), **kw)\n    print(len(y))"
    )


def test_decorators_and_defaults_are_module_level() -> None:
    out = rewrite("@deco(1)\ndef h(e=make()):\n    return obj.m()\n")
    assert out == "@deco(1)\ndef h(e=make()):\n    return _ak_call(obj.m)"


def test_await_and_lambdas_and_classes() -> None:
    out = rewrite(
        "async def h():\n    await fetch(u)\n    f = lambda x: g(x)\n"
        "class C:\n    v = init()\n    def m(self):\n        return super().m(io())\n"
    )
    assert "await _ak_async_call(fetch, u)" in out
    assert "lambda x: _ak_call(g, x)" in out
    assert "v = _ak_call(init)" in out
    assert "_ak_call(super().m, _ak_call(io))" in out  # super() itself stays a plain call
