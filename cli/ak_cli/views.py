"""``ak project|trigger|deployment|event ...``: read-only views."""

from __future__ import annotations

from typing import Annotated

import typer
from akcore import cel
from akcore.errors import AKError

from . import client
from .render import emit, emit_list

JsonOpt = Annotated[bool, typer.Option("--json", "-j", help="One JSON object per line.")]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project name or id.")]

projects = typer.Typer(help="Projects.", no_args_is_help=True)
triggers = typer.Typer(help="Triggers.", no_args_is_help=True)
deployments = typer.Typer(help="Deployments.", no_args_is_help=True)
events = typer.Typer(help="Events.", no_args_is_help=True)

TRIGGER_KEYS = [
    "trigger_id",
    "name",
    "source_type",
    "project_id",
    "project",
    "event_type",
    "filter",
    "call",
    "schedule",
    "connection",
    "is_durable",
    "is_sync",
    "webhook_slug",
]
EVENT_KEYS = [
    "event_id",
    "project_id",
    "destination_id",
    "event_type",
    "created_at",
    "data",
    "memo",
    "notes",
]


@projects.command("list")
def project_list(as_json: JsonOpt = False) -> None:
    emit_list(client.call("project.list"), as_json)


@projects.command("get")
def project_get(project: str, as_json: JsonOpt = False) -> None:
    emit(client.call("project.get", project=project), as_json, label="project")


@triggers.command("list")
def trigger_list(project: ProjectOpt = "", as_json: JsonOpt = False) -> None:
    emit_list(client.call("trigger.list", project=project), as_json, TRIGGER_KEYS)


@triggers.command("get")
def trigger_get(trigger: str, project: ProjectOpt = "", as_json: JsonOpt = False) -> None:
    emit(
        client.call("trigger.get", trigger=trigger, project=project),
        as_json,
        TRIGGER_KEYS,
        label="trigger",
    )


@deployments.command("list")
def deployment_list(project: ProjectOpt = "", as_json: JsonOpt = False) -> None:
    emit_list(
        client.call("deployment.list", project=project),
        as_json,
        ["deployment_id", "project_id", "project", "build_id", "state", "created_at"],
    )


@events.command("list")
def event_list(project: ProjectOpt = "", as_json: JsonOpt = False) -> None:
    emit_list(client.call("event.list", project=project), as_json, EVENT_KEYS)


@events.command("get")
def event_get(
    event_id: str,
    as_json: JsonOpt = False,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="show credential headers instead of <secret>")
    ] = False,
) -> None:
    """Show an event; headers that carry credentials print as <secret> unless --reveal."""
    shown = client.call("event.get", event_id=event_id, reveal=reveal)
    emit(shown, as_json, EVENT_KEYS, label="event")


@events.command("redispatch")
def event_redispatch(event_id: str) -> None:
    """Dispatch a copy of an event again; prints the new event id."""
    typer.echo(client.call("event.redispatch", event_id=event_id)["event_id"])


@events.command("verify-filter")
def event_verify_filter(expr: str) -> None:
    """Check that a CEL filter expression compiles."""
    try:
        cel.validate_filter(expr)
    except cel.FilterError as e:
        raise AKError(f"verify filter: {e}") from None
    typer.echo("result: filter expression is valid")


@triggers.command("create")
def trigger_create(
    name: Annotated[str, typer.Option("--name", "-n")],
    project: ProjectOpt,
    call: Annotated[str, typer.Option("--call", "-l", help="file.py:function")] = "",
    webhook: Annotated[bool, typer.Option("--webhook", "-w")] = False,
    schedule: Annotated[str, typer.Option("--schedule", "-s")] = "",
    event_type: Annotated[str, typer.Option("--event-type", "-E")] = "",
    filter_: Annotated[str, typer.Option("--filter", "-f")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a trigger outside the manifest (non-durable, as in AutoKitteh)."""
    spec = {
        "name": name,
        "call": call,
        "schedule": schedule,
        "event_type": event_type,
        "filter": filter_,
    }
    if webhook:
        spec["type"] = "webhook"
    t = client.call("trigger.create", project=project, trigger=spec)
    if as_json:
        emit(t, True)
        return
    typer.echo(f"trigger_id: {t['trigger_id']}")
    if t.get("webhook_slug"):
        typer.echo(f"webhook path: /webhooks/{t['webhook_slug']}")


@triggers.command("delete")
def trigger_delete(trigger: str, project: ProjectOpt = "") -> None:
    client.call("trigger.delete", trigger=trigger, project=project)


@deployments.command("activate")
def deployment_activate(deployment_id: str) -> None:
    client.call("deployment.activate", deployment_id=deployment_id)


@deployments.command("deactivate")
def deployment_deactivate(deployment_id: str) -> None:
    """Retire a deployment; running sessions finish, then it becomes inactive."""
    client.call("deployment.deactivate", deployment_id=deployment_id)


@deployments.command("get")
def deployment_get(deployment_id: str, as_json: JsonOpt = False) -> None:
    emit(
        client.call("deployment.get", deployment_id=deployment_id),
        as_json,
        ["deployment_id", "project_id", "build_id", "state", "created_at"],
        label="deployment",
    )
