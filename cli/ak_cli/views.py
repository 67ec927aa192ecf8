"""``ak project|trigger|deployment|event ...``: read-only views."""

from __future__ import annotations

from typing import Annotated

import typer

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
def event_get(event_id: str, as_json: JsonOpt = False) -> None:
    emit(client.call("event.get", event_id=event_id), as_json, EVENT_KEYS, label="event")
