"""Options many commands share, each with AutoKitteh's flags and a one-line help."""

from __future__ import annotations

from typing import Annotated

import typer
from akcore.errors import NotFound

JsonOpt = Annotated[
    bool, typer.Option("--json", "-j", help="Print one JSON object per line instead of text.")
]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project name or ID.")]
FailOpt = Annotated[
    bool,
    typer.Option(
        "--fail", "-f", help="Fail (exit 44) when nothing is found, instead of no output."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]


def silent_unless(fail: bool, e: NotFound) -> None:
    """AutoKitteh's ``--fail``: a not-found result is no output and exit 0 without it."""
    if fail:
        raise e
