"""What a request points at: the references in each public operation's request, which an
API token limited to projects (``ak auth create-token --project``) may only aim at its own
projects (ingress checks them: ``ak_ingress.confine``; the store finds the project of each:
``scope.resolve``).

Every field of every public request is a reference of one of the kinds below, or is
declared not to be one (``NOT_REFS``, with why); ``unclassified`` names the others, and a
unit test fails while there are any, so a field added later cannot slip past the check.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Kinds of reference, each what the store resolves to a project id.
PROJECT = "project"  # a name or prj_ id
ENV = "env"  # an env_ id or PROJECT/default
CONNECTION = "connection"  # a con_ id or PROJECT/NAME
TRIGGER = "trigger"  # a trg_ id, or a name in the request's project
SESSION_OR_PROJECT = "session or project"  # a ses_ id, or a project (its newest session)
SESSION = "session"
BUILD = "build"
DEPLOYMENT = "deployment"
EVENT = "event"
DESTINATION = "destination"  # a trigger (trg_ id) or a connection

KINDS = (
    PROJECT,
    ENV,
    CONNECTION,
    TRIGGER,
    SESSION_OR_PROJECT,
    SESSION,
    BUILD,
    DEPLOYMENT,
    EVENT,
    DESTINATION,
)

# Each request field that names a project or an object of one, by its name.
FIELDS: dict[str, str] = {
    "project": PROJECT,
    "env": ENV,
    "connection": CONNECTION,
    "trigger": TRIGGER,
    "session": SESSION_OR_PROJECT,
    "session_id": SESSION,
    "parent": SESSION,
    "build_id": BUILD,
    "deployment_id": DEPLOYMENT,
    "deployment": DEPLOYMENT,
    "event_id": EVENT,
    "event_ids": EVENT,
    "destination": DESTINATION,
}

# Fields that are not references, and why.
NOT_REFS: dict[str, str] = {
    "within": "set by ingress to the token's projects",
    "name": "a new object's name in the request's project (or a var's)",
    "display_name": "a new project's label (project.create is refused)",
    "names": "var names in the request's project",
    "integration": "an integration (int_ id or name), the same for every project",
    "files": "a build's files",
    "requirements": "a requirements.txt",
    "token": "a pip install's progress handle (build.prepare)",
    "offset": "a position in pip's output",
    "values": "a connection's vars",
    "secrets": "a connection's secret vars",
    "delete": "var names of the request's connection",
    "value": "a var's value",
    "secret": "a flag",
    "description": "a var's description",
    "reveal": "a flag",
    "sealed": "a flag",
    "with_files": "a flag",
    "include_contents": "a flag",
    "from_scratch": "a flag",
    "skip_existing_secrets": "a flag",
    "durable": "a flag",
    "force": "a flag",
    "reason": "text",
    "entrypoint": "a file and function of the session's own build",
    "inputs": "a session's inputs",
    "memo": "an event's or a session's memo",
    "data": "an event's data",
    "event_type": "text",
    "state": "a session state",
    "kinds": "journal record kinds",
    "created_after": "a time",
    "created_before": "a time",
    "page_size": "a number",
    "page_token": "a position in a list",
    "skip": "a number",
    "limit": "a number",
    "expires_in": "a duration",
}

# (request type, field) pairs that share a reference's name but are not one.
NOT_REFS_OF: dict[tuple[str, str], str] = {
    ("TriggerCreate", "trigger"): "a new trigger's spec, in the request's project",
    ("TokenCreate", "projects"): "a new token's projects: auth.create_token checks them",
    ("TokenRevoke", "token_id"): "an API token: auth.revoke_token is checked by itself",
    ("ManifestPlan", "project_name"): "the manifest's project: checked with the manifest",
    ("ManifestApply", "project_name"): "the manifest's project: checked with the manifest",
    ("ManifestPlan", "text"): "a manifest: its project is checked (ak_ingress.confine)",
    ("ManifestApply", "text"): "a manifest: its project is checked (ak_ingress.confine)",
    ("ManifestApply", "project_id"): "the id its project must have (set by ingress)",
}

Ref = tuple[str, str, str]  # kind, value, the request's project (where a name is looked up)


def refs(request: Any) -> list[Ref]:
    """The references a typed request makes (empty values are none)."""
    kind_of = type(request).__name__
    context = getattr(request, "project", "")
    found: list[Ref] = []
    for f in dataclasses.fields(request):
        kind = FIELDS.get(f.name)
        if kind is None or (kind_of, f.name) in NOT_REFS_OF:
            continue
        value = getattr(request, f.name)
        for one in value if isinstance(value, list) else [value]:
            if one:
                found.append((kind, str(one), str(context or "")))
    return found


def unclassified(request_type: type) -> list[str]:
    """The fields of ``request_type`` that are neither references nor declared not to be."""
    name = request_type.__name__
    return [
        f.name
        for f in dataclasses.fields(request_type)
        if f.name not in FIELDS and f.name not in NOT_REFS and (name, f.name) not in NOT_REFS_OF
    ]
