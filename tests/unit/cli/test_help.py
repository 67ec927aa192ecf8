"""Help that helps: `ak --help` lists every noun, and every command, argument and option
says in a line what it is for."""

from __future__ import annotations

from typing import Any

import typer
from ak_cli.main import NOUNS, app
from typer.testing import CliRunner


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every visible command under ``cmd`` (typer's click groups and commands)."""
    out = [(path, cmd)]
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            if not sub.hidden:
                out += _commands(sub, (*path, name))
    return out


def test_every_noun_is_listed() -> None:
    shown = CliRunner().invoke(app, ["--help"]).output
    for _, noun, aliases in NOUNS:
        assert f"  {noun} " in shown
        for alias in aliases:
            assert f"  {alias} " not in shown  # aliases work but are not listed


def test_every_command_and_parameter_has_a_description() -> None:
    missing = []
    commands = _commands(typer.main.get_command(app))
    assert len(commands) > 70
    for path, cmd in commands:
        if not (cmd.help or "").strip():
            missing.append(" ".join(path) or "ak")
        for p in cmd.params:
            if p.name != "help" and not (getattr(p, "help", None) or "").strip():
                missing.append(f"{' '.join(path)} {p.name}")
    assert missing == []


def test_help_shows_no_raw_markup() -> None:
    for path, cmd in _commands(typer.main.get_command(app)):
        assert "``" not in (cmd.help or ""), " ".join(path)
