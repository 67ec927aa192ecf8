"""``ak var ...`` and ``ak env list``: project variables and secrets."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from akcore.errors import AKError

from . import client
from .render import emit_list

MAX_STDIN = 1024 * 1024

app = typer.Typer(help="Variables and secrets of a project.", no_args_is_help=True)
envs = typer.Typer(help="Environments (one per project: default).", no_args_is_help=True)

ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project name or id.")]
EnvOpt = Annotated[str, typer.Option("--env", "-e", help="env_... id or PROJECT/default.")]
ConnOpt = Annotated[
    str, typer.Option("--connection", "-c", help="con_... id or PROJECT/CONNECTION.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", "-j", help="Print one JSON object per line instead of text.")
]
NameArg = Annotated[str, typer.Argument(help="Variable name: letters, digits and _.")]


def _scope(project: str, env: str, connection: str = "") -> dict[str, str]:
    if sum(map(bool, (project, env, connection))) != 1:
        raise AKError("give exactly one of --project, --env and --connection")
    return {"project": project, "env": env, "connection": connection}


@app.command("set")
def var_set(
    name: NameArg,
    value: Annotated[
        str | None, typer.Argument(help="Read from standard input if omitted.")
    ] = None,
    secret: Annotated[
        bool, typer.Option("--secret", "-s", help="Encrypt it at rest and mask it when read.")
    ] = False,
    project: ProjectOpt = "",
    env: EnvOpt = "",
    connection: ConnOpt = "",
    description: Annotated[
        str | None, typer.Option("--description", help="What the variable is for.")
    ] = None,
) -> None:
    """Set a variable (secrets are encrypted at rest and masked when read)."""
    scope = _scope(project, env, connection)
    if value is None:
        data = sys.stdin.buffer.read(MAX_STDIN + 1)
        if len(data) > MAX_STDIN:
            raise AKError(f"the value on standard input is over the {MAX_STDIN} byte limit")
        try:
            value = data.decode()
        except UnicodeDecodeError:
            raise AKError("the value on standard input is not UTF-8 text") from None
    client.call("var.set", name=name, value=value, secret=secret, description=description, **scope)


@app.command("get")
def var_get(
    names: Annotated[
        list[str] | None, typer.Argument(help="Variables to print (all when omitted).")
    ] = None,
    project: ProjectOpt = "",
    env: EnvOpt = "",
    connection: ConnOpt = "",
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Print secret values instead of <secret>.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print variables as NAME="value"; secrets print NAME=<secret> unless --reveal."""
    scope = _scope(project, env, connection)
    rows = client.call("var.get", names=names or [], reveal=reveal, **scope)
    for v in rows:
        if as_json:
            typer.echo(json.dumps(v))
            continue
        shown = "<secret>" if v["value"] is None else json.dumps(v["value"])
        line = f"{v['name']}={shown}"
        typer.echo(f"{line} # {v['description']}" if v["description"] else line)


@app.command("delete")
def var_delete(
    name: NameArg, project: ProjectOpt = "", env: EnvOpt = "", connection: ConnOpt = ""
) -> None:
    """Delete a variable."""
    client.call("var.delete", name=name, **_scope(project, env, connection))


@envs.command("list")
def env_list(project: ProjectOpt = "", as_json: JsonOpt = False) -> None:
    """Each project's one environment, "default", with its ID."""
    emit_list(
        client.call("env.list", project=project),
        as_json,
        ["env_id", "name", "project_id", "project"],
    )
