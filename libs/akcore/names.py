"""The one rule for the names users give projects, triggers, connections and vars."""

from __future__ import annotations

import re

from .ids import looks_like_id

MAX_NAME = 128
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def name_problem(name: str) -> str:
    """Why ``name`` cannot be a name, "" when it can. A name is AutoKitteh's symbol,
    ``[A-Za-z_][A-Za-z0-9_]*``, in ASCII only (a Cyrillic "а" would make a look-alike of
    another project's name), at most ``MAX_NAME`` characters, and not of the shape of an
    id (ids are looked up first: it could never be found by name)."""
    if not _NAME.fullmatch(name):  # (fullmatch: "$" would let a final newline through)
        return "use ASCII letters, digits and _, not starting with a digit"
    if len(name) > MAX_NAME:
        return f"a name is at most {MAX_NAME} characters"
    if looks_like_id(name):
        return "it has the shape of an id (prj_..., trg_..., con_...): choose another name"
    return ""
