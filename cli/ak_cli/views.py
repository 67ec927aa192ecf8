"""``ak trigger|deployment|event ...``: triggers, deployments and events."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from akcore.errors import AKError

from . import client
from . import events as events_mod
from .options import JsonOpt, ProjectOpt
from .render import emit, emit_list

triggers = typer.Typer(help="Create, list, show and delete triggers.", no_args_is_help=True)
deployments = typer.Typer(
    help="Create, activate, deactivate, show and delete deployments.", no_args_is_help=True
)
events = typer.Typer(help="List, show, dispatch and save events.", no_args_is_help=True)
events_mod.register(events)
DeploymentArg = Annotated[str, typer.Argument(help="Deployment ID (dep_...).")]

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


TriggerArg = Annotated[str, typer.Argument(help="Trigger name (with --project) or ID.")]
EventArg = Annotated[str, typer.Argument(help="Event ID (evt_...).")]
DEPLOYMENT_KEYS = ["deployment_id", "project_id", "project", "build_id", "state", "created_at"]


@triggers.command("list")
def trigger_list(project: ProjectOpt = "", as_json: JsonOpt = False) -> None:
    """Triggers, one per line (every project's unless --project)."""
    emit_list(client.call("trigger.list", project=project), as_json, TRIGGER_KEYS)


@triggers.command("get")
def trigger_get(trigger: TriggerArg, project: ProjectOpt = "", as_json: JsonOpt = False) -> None:
    """One trigger, with its webhook_slug for a webhook."""
    emit(
        client.call("trigger.get", trigger=trigger, project=project),
        as_json,
        TRIGGER_KEYS,
        label="trigger",
    )


@deployments.command("list")
def deployment_list(project: ProjectOpt = "", as_json: JsonOpt = False) -> None:
    """Deployments, newest first (every project's unless --project)."""
    emit_list(client.call("deployment.list", project=project), as_json, DEPLOYMENT_KEYS)


@events.command("list")
def event_list(project: ProjectOpt = "", as_json: JsonOpt = False) -> None:
    """Events, newest first, without their data (every project's unless --project)."""
    emit_list(client.call("event.list", project=project), as_json, EVENT_KEYS)


@events.command("get")
def event_get(
    event_id: EventArg,
    as_json: JsonOpt = False,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Show credential headers instead of <secret>.")
    ] = False,
) -> None:
    """Show an event; headers that carry credentials print as <secret> unless --reveal."""
    shown = client.call("event.get", event_id=event_id, reveal=reveal)
    emit(shown, as_json, EVENT_KEYS, label="event")


@events.command("redispatch")
def event_redispatch(event_id: EventArg) -> None:
    """Dispatch a copy of an event again; prints the new event ID."""
    typer.echo(client.call("event.redispatch", event_id=event_id)["event_id"])


@events.command("verify-filter")
def event_verify_filter(
    expr: Annotated[str, typer.Argument(help="A CEL expression over data and event_type.")],
) -> None:
    """Check that a CEL filter expression compiles."""
    from akcore import cel  # ~0.2 s to import: only this command evaluates CEL here

    try:
        cel.validate_filter(expr)
    except cel.FilterError as e:
        raise AKError(f"verify filter: {e}") from None
    typer.echo("result: filter expression is valid")


@triggers.command("create")
def trigger_create(
    name: Annotated[str, typer.Option("--name", "-n", help="Trigger name.")],
    project: ProjectOpt,
    call: Annotated[
        str, typer.Option("--call", "-l", help="Handler to run: file.py:function.")
    ] = "",
    webhook: Annotated[bool, typer.Option("--webhook", "-w", help="A webhook trigger.")] = False,
    schedule: Annotated[
        str, typer.Option("--schedule", "-s", help='A cron schedule, e.g. "*/5 * * * *".')
    ] = "",
    event_type: Annotated[
        str, typer.Option("--event-type", "-E", help="Only events of this type.")
    ] = "",
    filter_: Annotated[
        str, typer.Option("--filter", "-f", help="Only events this CEL expression accepts.")
    ] = "",
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
def trigger_delete(trigger: TriggerArg, project: ProjectOpt = "") -> None:
    """Delete a trigger."""
    client.call("trigger.delete", trigger=trigger, project=project)


@deployments.command("create")
def deployment_create(
    build_id: Annotated[str, typer.Option("--build-id", "-b", help="The build to deploy.")],
    project: Annotated[str, typer.Option("--project", "-e", help="Project name or ID.")],
    activate: Annotated[
        bool, typer.Option("--activate", "-a", help="Activate it once created.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a deployment of a build of the project; prints its ID."""
    did = client.call("deployment.create", project=project, build_id=build_id)
    typer.echo(json.dumps({"deployment_id": did}) if as_json else f"deployment_id: {did}")
    if activate:
        client.call("deployment.activate", deployment_id=did)


@deployments.command("activate")
def deployment_activate(deployment_id: DeploymentArg) -> None:
    """Activate a deployment; the project's active one retires (draining while it has
    sessions)."""
    client.call("deployment.activate", deployment_id=deployment_id)


@deployments.command("deactivate")
def deployment_deactivate(deployment_id: DeploymentArg) -> None:
    """Retire a deployment; running sessions finish, then it becomes inactive."""
    client.call("deployment.deactivate", deployment_id=deployment_id)


@deployments.command("get")
def deployment_get(deployment_id: DeploymentArg, as_json: JsonOpt = False) -> None:
    """One deployment."""
    emit(
        client.call("deployment.get", deployment_id=deployment_id),
        as_json,
        DEPLOYMENT_KEYS[:2] + DEPLOYMENT_KEYS[3:],
        label="deployment",
    )


@deployments.command("delete")
def deployment_delete(deployment_id: DeploymentArg) -> None:
    """Delete an INACTIVE deployment (its ended sessions stay listed)."""
    client.call("deployment.delete", deployment_id=deployment_id)
