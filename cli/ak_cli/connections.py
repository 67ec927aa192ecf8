"""``ak connection ...`` and ``ak integration list``: the connections of projects' manifests
and the integrations they may name."""

from __future__ import annotations

from typing import Annotated

import typer
from akcore.errors import AKError, NotFound

from . import client
from .options import FailOpt, JsonOpt
from .projects import silent_unless
from .render import emit, emit_list

connections = typer.Typer(help="List, show, test and delete connections.", no_args_is_help=True)
integrations = typer.Typer(help="The integrations connections can use.", no_args_is_help=True)

ConnArg = Annotated[str, typer.Argument(help="Connection ID (con_...) or PROJECT/NAME.")]
CONNECTION_KEYS = [
    "connection_id",
    "integration_id",
    "integration",
    "project_id",
    "project",
    "name",
    "status",
    "links",
]


@connections.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Connection name: letters, digits and _.")],
    integration: Annotated[
        str,
        typer.Option("--integration", "-i", help="Integration name or ID: http, github or slack."),
    ] = "",
    project: Annotated[str, typer.Option("--project", "-p", help="Project name or ID.")] = "",
    org: Annotated[
        str, typer.Option("--org", "-o", help="Not supported: connections belong to projects.")
    ] = "",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the ID.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a connection in a project; prints its ID. Set its vars with `ak var set -c`."""
    if not integration:
        raise AKError('required flag(s) "integration" not set')
    if org and not project:
        raise AKError("org-level connections are not supported: give --project")
    if not project:
        raise AKError("at least one of the flags in the group [project org] is required")
    res = client.call("connection.create", project=project, name=name, integration=integration)
    if as_json:
        emit(res, True)
    else:
        typer.echo(f"connection_id: {res['connection_id']}")


@connections.command("list")
def list_(
    integration: Annotated[
        str, typer.Option("--integration", "-i", help="Only this integration (name or ID).")
    ] = "",
    project: Annotated[str, typer.Option("--project", "-p", help="Project name or ID.")] = "",
    as_json: JsonOpt = False,
    fail: FailOpt = False,
) -> None:
    """Connections, one per line (every project's unless --project)."""
    try:
        found = client.call("connection.list", project=project, integration=integration)
        if not found:
            raise NotFound("connections: not_found")
    except NotFound as e:
        silent_unless(fail, e)
        return
    emit_list(found, as_json, CONNECTION_KEYS)


@connections.command("get")
def get(connection: ConnArg, as_json: JsonOpt = False, fail: FailOpt = False) -> None:
    """One connection."""
    try:
        found = client.call("connection.get", connection=connection)
    except NotFound as e:
        silent_unless(fail, e)
        return
    emit(found, as_json, CONNECTION_KEYS, label="connection")


@connections.command("test")
def test(connection: ConnArg, as_json: JsonOpt = False) -> None:
    """A connection's status from its vars, by AutoKitteh's rules for its integration (the
    service itself is not called)."""
    res = client.call("connection.test", connection=connection)
    if as_json:
        emit({"status": res}, True)
    else:
        typer.echo(f'status: code:{res["code"]} message:"{res["message"]}"')


@connections.command("delete")
def delete(connection: ConnArg) -> None:
    """Delete a connection and its vars (refused while a trigger uses it)."""
    client.call("connection.delete", connection=connection)


@integrations.command("list")
def integration_list(as_json: JsonOpt = False) -> None:
    """The integrations this server knows, one per line."""
    emit_list(client.call("integration.list"), as_json)
