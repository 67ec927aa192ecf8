"""Command-line values turned into ``str``, ``int`` and ``list[str]`` without pydantic.

typer 0.29 coerces every parameter's value with a pydantic ``TypeAdapter``, built when a
value is first processed: importing pydantic is ~70 ms and each adapter ~1.5 ms, half of a
whole ``ak session list``. The values that reach ``ak``'s parameters are argv's text (or
the defaults), and for its plain annotations the adapters only hand back that text, a list
of it, a decimal integer, or the flag's bool. ``install`` makes typer give each such
parameter a coercion that does this much in place, and leave the rest to typer's own
adapter, built only then: a value this does not recognise (``--page-size ten``, ``1_000``)
gets typer's result and its error message, unchanged.

This replaces the function through which typer builds a parameter's coercion
(``typer.core.build_runtime_param``, private), for the ``ak`` process only (``main``):
tests/unit/cli/test_import_cost.py fails if a typer upgrade brings pydantic back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args, get_origin

import typer.core
from typer._click import Context
from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer.core import _TyperParameter


def _is_plain(desc: TypeDescriptor) -> bool:
    info = desc.parameter_info
    if desc.file_annotation is not None or info.parser is not None:
        return False
    ann = desc.annotation
    if ann is int:
        return (info.min, info.max, info.clamp) == (None, None, False)
    if ann in (str, bool):
        return True
    origin: Any = get_origin(ann)
    return origin is list and get_args(ann) == (str,)


@dataclass(frozen=True)
class PlainParam(RuntimeParam):
    """A plain parameter's coercion: text as it is, decimal digits as an int, a flag's bool
    as it is, a list of text as a list; anything else through typer's own adapter."""

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
        ann = self.annotation
        if ann is str or ann is bool:
            if type(value) is ann:
                return value
        elif ann is int:
            if type(value) is int:
                return value
            if type(value) is str and value.isascii() and value.isdigit() and len(value) < 19:
                return int(value)
        elif isinstance(value, (list, tuple)) and all(type(v) is str for v in value):
            return list(value)
        return build_runtime_param(param.type_descriptor)._coerce_value(value, param, ctx)


def runtime_param(descriptor: TypeDescriptor) -> RuntimeParam:
    """What typer.core calls to make a parameter's coercion, when it first needs one."""
    if _is_plain(descriptor):
        return PlainParam(
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation
        )
    return build_runtime_param(descriptor)


def install() -> None:
    """Makes typer give plain parameters a ``PlainParam``, in this process (``ak``'s)."""
    typer.core.build_runtime_param = runtime_param  # type: ignore[attr-defined]
