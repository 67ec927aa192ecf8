"""How big a CEL filter may be, and how big the values it builds as it runs.

cel-python is pure Python: it parses a filter into a tree of about ten nodes per token, at
~0.1 ms of CPU and ~3.5 KB of memory per token (kept for as long as the compiled program is),
and evaluates that tree by recursion, so a tree ~500 levels deep runs out of stack on every
event. A filter is therefore measured before it is parsed, wherever it enters (a manifest,
``ak trigger create``, ``autokitteh.subscribe``, ``ak event verify-filter``) and wherever
it is compiled; its tree is measured once parsed. At the limits below a filter parses in
~50 ms and takes ~2 MB. (AutoKitteh's cel-go allows 100,000 characters and 250 levels of
its parser's recursion; the CEL specification asks for at least 12 levels of nesting.)

As it runs, a filter is held to its CPU budget between two steps of the interpreter, but one
step (one ``replace``, one ``+``) can take gigabytes: the functions that make strings and
lists longer than their inputs check the size of what they would make first, and raise
``OverLimit``.
"""

from __future__ import annotations

import re
from typing import Any

MAX_CHARS = 4096  # characters of a filter's text
MAX_TOKENS = 500  # its names, literals, operators and brackets
MAX_NESTING = 16  # brackets open at once
MAX_DEPTH = 300  # levels of its parse tree
MAX_BUILT = 1 << 20  # characters, bytes or items of a string, bytes or list it builds

_ADVICE = "filter on a few fields and check the rest in the handler"

# The lexemes of CEL, near enough to count tokens and brackets (the parser finds the errors):
# space and comments, which count for nothing, then string and bytes literals, whose brackets
# are not brackets, then names and numbers, two-character operators, any other character.
_LEXEME = re.compile(
    r"\s+|//[^\n]*"
    r"|(?P<token>[rRbB]{0,2}(?:'''[\s\S]*?'''|\"\"\"[\s\S]*?\"\"\""
    r"|'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\")"
    r"|\w+|&&|\|\||[=!<>]=|[\s\S])"
)
_OPEN, _CLOSE = frozenset("([{"), frozenset(")]}")


class TooBig(ValueError):
    """A filter over one of the limits on its size (a ``cel.FilterError`` says so)."""


class OverLimit(BaseException):
    """Raised by a function a filter calls when what it would make is over ``MAX_BUILT``.
    Not an ``Exception``: cel-python turns those into CEL error values and carries on (past
    an ``||``, which would throw the error away and let the filter build the next one)."""


def measure(expr: str) -> int:
    """The number of tokens of ``expr``; raises ``TooBig`` when its text, its tokens or its
    nesting are over the limits. Takes well under a millisecond: run it before parsing."""
    if len(expr) > MAX_CHARS:
        raise TooBig(f"it is {len(expr)} characters long, over the limit of {MAX_CHARS}: {_ADVICE}")
    tokens = depth = deepest = 0
    for m in _LEXEME.finditer(expr):
        token = m.group("token")
        if token is None:
            continue
        tokens += 1
        if token in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif token in _CLOSE:
            depth = max(depth - 1, 0)
    if tokens > MAX_TOKENS:
        raise TooBig(
            f"it has {tokens} tokens (names, literals, operators and brackets), "
            f"over the limit of {MAX_TOKENS}: {_ADVICE}"
        )
    if deepest > MAX_NESTING:
        raise TooBig(f"its brackets nest {deepest} deep, over the limit of {MAX_NESTING}")
    return tokens


def check_depth(tree: Any) -> None:
    """Raises ``TooBig`` when a parsed filter (a ``lark.Tree``) is more than ``MAX_DEPTH``
    levels deep: long chains of operators nest as deep as brackets do."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((c, depth + 1) for c in getattr(node, "children", ()))
    if deepest > MAX_DEPTH:
        raise TooBig(
            f"it nests {deepest} levels deep once parsed, over the limit of {MAX_DEPTH}: "
            "use fewer nested brackets and macros, and shorter chains of operators"
        )


def check_built(what: str, size: int, unit: str) -> None:
    """Raises ``OverLimit`` when ``what`` would make a value of ``size`` ``unit``."""
    if size > MAX_BUILT:
        raise OverLimit(
            f"filter ran over its size limit: {what} would make {size} {unit}, "
            f"more than the {MAX_BUILT} a filter may build"
        )
