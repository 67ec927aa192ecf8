"""Plans a manifest against what the store holds: the ``[plan]`` lines and the actions to run.

Pure: the store passes in its current state and executes the returned actions in one
transaction, so a rejected manifest changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument
from .manifest import Manifest, Trigger, Var


@dataclass
class Action:
    type: str  # create_project, set_var, delete_var, create_trigger, update_trigger, ...
    key: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Current:
    """The project's state in the store (``project_id`` empty when it does not exist)."""

    project_id: str = ""
    display_name: str = ""
    vars: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> value, secret, desc
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> id + spec
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)

    def say(self, kind: str, key: str, msg: str) -> None:
        self.lines.append(f'[plan] {kind} "{key}": {msg}')


def trigger_key(project: str, t: Trigger) -> str:
    if t.schedule:
        what = f"schedule:{t.schedule}"
    elif t.has_webhook_field:
        what = "webhook"
    elif t.connection:
        what = f"connection:{project}/{t.connection}"
    else:
        what = ""
    return f"{project}:{what}/{t.name}"


def _plan_vars(
    plan: Plan,
    parent: str,
    wanted: tuple[Var, ...],
    have_vars: dict[str, dict[str, Any]],
    skip_existing_secrets: bool,
    scope: dict[str, str],
) -> None:
    """Set actions for the vars of a project (``scope`` empty) or a connection. AutoKitteh
    words the two differently: project vars say ``differs, will set`` and nothing when equal,
    connection vars ``changed, will update`` and ``no change needed``."""
    of_connection = bool(scope)
    for v in wanted:
        key = f"{parent}/{v.name}"
        have = have_vars.get(v.name)
        want = {"value": v.value, "secret": v.secret, "description": v.description}
        if have is None:
            plan.say("var", key, "not found, will set")
        elif have == want:
            if of_connection:
                plan.say("var", key, "no change needed")
            continue
        elif skip_existing_secrets and (have["secret"] or v.secret):
            plan.say("var", key, "value differs but one of them is secret, skipping")
            continue
        else:
            plan.say("var", key, "changed, will update" if of_connection else "differs, will set")
        plan.actions.append(Action("set_var", key, {"name": v.name, **scope, **want}))


def plan_manifest(m: Manifest, cur: Current, skip_existing_secrets: bool = False) -> Plan:
    plan = Plan()
    p = m.project
    if p is None:
        return plan
    name = p.name
    if not cur.project_id:
        plan.say("project", name, "not found, will create")
        plan.actions.append(Action("create_project", name, {"display_name": p.display_name}))
    else:
        plan.say("project", name, f'found, id="{cur.project_id}"')
        if p.display_name and p.display_name != cur.display_name:
            plan.say("project", name, "not as desired, will update")
            plan.actions.append(Action("update_project", name, {"display_name": p.display_name}))
        else:
            plan.say("project", name, "no changes needed")

    _plan_vars(plan, name, p.vars, cur.vars, skip_existing_secrets, {})
    wanted_vars = {v.name for v in p.vars}
    for vname in sorted(set(cur.vars) - wanted_vars):
        plan.say("project", name, f'env var "{vname}" is not in the manifest, will delete')
        plan.actions.append(Action("delete_var", f"{name}/{vname}", {"name": vname}))

    if cur.project_id:
        plan.say("project", name, f"found {len(cur.connections)} connections")
    for c in p.connections:
        key = f"{name}/{c.name}"
        have_conn = cur.connections.get(c.name)
        if have_conn is None:
            plan.say("connection", key, "not found, will create")
            plan.actions.append(
                Action("create_connection", key, {"name": c.name, "integration": c.integration})
            )
        elif have_conn["integration"] != c.integration:
            plan.say("connection", key, "not as desired, will update")
            plan.actions.append(
                Action(
                    "update_connection",
                    key,
                    {"connection_id": have_conn["connection_id"], "integration": c.integration},
                )
            )
        else:
            plan.say("connection", key, "no changes needed")
        have_vars = have_conn["vars"] if have_conn else {}
        _plan_vars(plan, key, c.vars, have_vars, skip_existing_secrets, {"connection": c.name})
    wanted_conns = {c.name for c in p.connections}
    for cname, have_conn in sorted(cur.connections.items()):
        if cname not in wanted_conns:
            plan.say("project", name, f'connection "{cname}" is not in the manifest, will delete')
            plan.actions.append(
                Action(
                    "delete_connection",
                    f"{name}/{cname}",
                    {"connection_id": have_conn["connection_id"]},
                )
            )

    if cur.project_id:
        plan.say("project", name, f"found {len(cur.triggers)} triggers")
    for t in p.triggers:
        key = trigger_key(name, t)
        have = cur.triggers.get(t.name)
        spec = {"name": t.name, **t.spec()}
        if have is None:
            plan.say("trigger", key, "not found, will create")
            plan.actions.append(Action("create_trigger", key, spec))
            continue
        plan.say("trigger", key, f'found, id="{have["trigger_id"]}"')
        if have["source_type"] != t.source_type:
            raise InvalidArgument(
                f'trigger "{key}": source type cannot be updated ({have["source_type"]} -> '
                f"{t.source_type}); give the trigger a new name to replace it"
            )
        if all(have.get(k) == v for k, v in t.spec().items()):
            plan.say("trigger", key, "no changes needed")
        else:
            plan.say("trigger", key, "not as desired, will update")
            plan.actions.append(
                Action("update_trigger", key, {**spec, "trigger_id": have["trigger_id"]})
            )
    wanted_triggers = {t.name for t in p.triggers}
    for tname, have in sorted(cur.triggers.items()):
        if tname not in wanted_triggers:
            tid = have["trigger_id"]
            plan.say("project", name, f'trigger "{tid}" is not in the manifest, will delete')
            plan.actions.append(Action("delete_trigger", f"{name}:/{tname}", {"trigger_id": tid}))
    return plan
