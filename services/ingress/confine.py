"""API tokens limited to projects (``ak auth create-token --project``). Before an operation
runs for such a token: what concerns the whole server is refused, every project and object
its request names (``akcore.scope``) must be of the token's projects, and lists are
narrowed to them. The API and the web UI both pass here (``commands.perform``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from akcore import bus, ops, scope
from akcore.errors import NotFound, PermissionDenied
from akcore.integrations import routes_an_installation
from akcore.manifest import Manifest, parse_manifest
from nats.aio.client import Client

from .auth import Caller

# What a limited token may not do at all, said as "it may not ...".
WHOLE_SERVER = {
    "project.create": "create projects",
    "auth.list_tokens": "list the API tokens (ak auth whoami shows its own)",
}
MANIFESTS = frozenset({"manifest.plan", "manifest.apply"})
UNLIMITED = "call with a token that is not limited to projects"


async def confine(
    nc: Client, op: ops.Op, args: dict[str, Any], typed: Any, caller: Caller
) -> dict[str, Any]:
    """``args`` (parsed: ``typed``) as operation ``op`` may run for ``caller``, whose token
    is limited to projects (narrowed to them); PermissionDenied or NotFound when it reaches
    past them."""
    if op.name in WHOLE_SERVER:
        raise PermissionDenied(
            f"this API token is limited to {await described(nc, caller)}, so it may not "
            f"{WHOLE_SERVER[op.name]}: {UNLIMITED}"
        )
    if op.name == "auth.revoke_token" and typed.token_id != caller.token_id:
        raise PermissionDenied(
            f"this API token is limited to {await described(nc, caller)}, so it may revoke "
            f"only itself ({caller.token_id}): {UNLIMITED}"
        )
    manifest = parse_manifest(typed.text, typed.project_name) if op.name in MANIFESTS else None
    routing = _installation_vars(op.name, typed, manifest)
    if routing:
        raise PermissionDenied(
            f"connection var {routing[0]} routes an installation of the server's GitHub or "
            "Slack app, whose deliveries the server cannot tell apart by project: a token "
            f"limited to projects may not set it; {UNLIMITED}"
        )
    args = dict(args)
    if "within" in {f.name for f in dataclasses.fields(op.request)}:
        args["within"] = list(caller.projects)
    refs = scope.refs(typed)
    if manifest is not None:  # its project is the manifest's, unless project_name renames it
        if manifest.project is None:  # (no project: the manifest changes nothing)
            return args
        name = manifest.project.name
        (project_id,) = await resolve(nc, [(scope.PROJECT, name, "")])
        if project_id not in caller.projects:
            raise PermissionDenied(
                f'project "{name}" is not one this API token may act on '
                f"({await described(nc, caller)}): a token limited to projects neither "
                f"creates a project nor changes another; {UNLIMITED}"
            )
        # What was checked is what the store applies: that name, and the project of that id
        # (not one deleted and made again under the name since).
        args["project_name"] = name
        if op.name == "manifest.apply":
            args["project_id"] = project_id
    await check(nc, refs, caller)
    return args


def _installation_vars(name: str, typed: Any, manifest: Manifest | None) -> list[str]:
    """The vars routing an installation of the server's app (``integrations``) that an
    operation would set on a connection."""
    if name == "var.set" and typed.connection:
        names = [typed.name]
    elif name == "connection.init":
        names = [*typed.values, *typed.secrets]
    elif name == "manifest.apply" and manifest is not None and manifest.project is not None:
        names = [v.name for c in manifest.project.connections for v in c.vars]
    else:
        return []
    return [n for n in names if routes_an_installation(n)]


async def check(nc: Client, refs: list[scope.Ref], caller: Caller) -> list[str]:
    """The project id of each of ``refs``; NotFound unless each names something of
    ``caller``'s projects (one that names nothing and one of another project are told
    apart by no one)."""
    if not refs:
        return []
    found = await resolve(nc, refs)
    for (kind, value, _), project_id in zip(refs, found, strict=True):
        if project_id not in caller.projects:
            raise NotFound(
                f'{kind} "{value}" not found in the projects this API token may act on '
                f"({await described(nc, caller)}): it reaches nothing else; {UNLIMITED}"
            )
    return found


async def resolve(nc: Client, refs: list[scope.Ref]) -> list[str]:
    """The project id of each reference ("" for one naming nothing)."""
    found = await bus.store_call(nc, "scope.resolve", {"refs": [list(r) for r in refs]})
    return [str(x) for x in found]


async def names(nc: Client, caller: Caller) -> list[str]:
    """The names of the caller's projects (the id of one deleted since)."""
    listed = await bus.store_call(nc, "project.list", {"within": list(caller.projects)})
    named = {str(p["project_id"]): str(p["name"]) for p in listed}
    return [named.get(p, f"{p} (deleted)") for p in caller.projects]


async def described(nc: Client, caller: Caller) -> str:
    """The caller's projects, for an error."""
    found = sorted(await names(nc, caller))
    return ("project " if len(found) == 1 else "projects ") + ", ".join(f'"{n}"' for n in found)
