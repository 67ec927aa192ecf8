"""Applies a manifest in one transaction: plan against the tables, then execute."""

from __future__ import annotations

from typing import Any

from akcore import ids, timefmt
from akcore.errors import AKError, Conflict, InvalidArgument
from akcore.integrations import INTEGRATIONS, unknown
from akcore.manifest import parse_manifest
from akcore.planning import Action, Current, plan_manifest
from akcore.secrets import Sealer
from sqlmodel import Session, col, select

from . import routes
from .models import Connection, Project, Trigger, Var

OUT, ERR = "out", "err"


def current_state(db: Session, name: str, sealer: Sealer) -> tuple[Project | None, Current]:
    project = db.exec(select(Project).where(Project.name == name)).first()
    if project is None:
        return None, Current()
    triggers = db.exec(select(Trigger).where(Trigger.project_id == project.project_id)).all()
    conns = db.exec(select(Connection).where(Connection.project_id == project.project_id)).all()
    return project, Current(
        project_id=project.project_id,
        display_name=project.display_name,
        vars=_vars(db, project.project_id, sealer),
        triggers={t.name: t.model_dump() for t in triggers},
        connections={
            c.name: {
                "connection_id": c.connection_id,
                "integration": c.integration,
                "vars": _vars(db, c.connection_id, sealer),
            }
            for c in conns
        },
    )


def _vars(db: Session, scope_id: str, sealer: Sealer) -> dict[str, dict[str, Any]]:
    return {
        v.name: {"value": sealer.open(v.value), "secret": v.is_secret, "description": v.description}
        for v in db.exec(select(Var).where(Var.scope_id == scope_id))
    }


# Bytes a project's vars and its connections' may take together, as stored (names and
# values; a secret's ciphertext is about a third longer than its value). A session's
# worker gets them all in one NATS message (``session.env``), and the web UI's Projects
# page each project's: nine vars of 1 MiB made every session of their project fail, and
# that page fail for the users of every project.
MAX_PROJECT_VARS = 4 * 1024 * 1024


def _project_of(db: Session, scope: str) -> str:
    """The project of a var's ``scope`` (a project id, or a connection's)."""
    if scope.startswith("con_"):
        conn = db.get(Connection, scope)
        return conn.project_id if conn is not None else scope
    return scope


def vars_size(db: Session, project_id: str) -> int:
    """What the vars of a project and of its connections take, as stored (``_stored_size``);
    one query, of names, values and descriptions only."""
    conns = select(Connection.connection_id).where(Connection.project_id == project_id)
    scopes = [project_id, *db.exec(conns)]
    rows = db.exec(
        select(Var.name, Var.value, Var.description).where(col(Var.scope_id).in_(scopes))
    )
    return sum(_stored_size(*row) for row in rows)


def check_room(db: Session, project_id: str, before: int, name: str = "") -> None:
    """InvalidArgument when the vars of ``project_id`` (as ``db`` holds them now, changes
    flushed) are over MAX_PROJECT_VARS and more than ``before``, what they took before the
    change: a change that grows nothing (a rename, a var made smaller, a project over the
    limit from before it was set shrinking) goes through."""
    total = vars_size(db, project_id)
    if total > MAX_PROJECT_VARS and total > before:
        which = f"var {name!r}: the vars of its project" if name else "the vars of the project"
        raise InvalidArgument(
            f"{which} (and of the project's connections) would take {total} bytes, over the "
            f"{MAX_PROJECT_VARS} they may take together: keep big data elsewhere and put a "
            "reference to it in a var"
        )


def _check_room(db: Session, scope: str, name: str, size: int, old: int) -> None:
    """``check_room`` for one var of ``scope`` that took ``old`` bytes (0: new) and would
    take ``size``, before it is changed."""
    if size <= old:
        return
    before = vars_size(db, _project_of(db, scope))
    after = before - old + size
    if after > MAX_PROJECT_VARS:
        raise InvalidArgument(
            f"var {name!r}: the vars of its project (and of the project's connections) would "
            f"take {after} bytes, over the {MAX_PROJECT_VARS} they may take together: keep big "
            "data elsewhere and put a reference to it in a var"
        )


def _stored_size(name: str, value: str, description: str = "") -> int:
    """What a var takes in a list of vars: its value, its name, its description (each in
    every list of the project's vars, the web UI's Projects page) and their framing."""
    return len(value.encode()) + len(name) + len(description.encode()) + 64


def put_var(
    db: Session,
    sealer: Sealer,
    scope: str,
    name: str,
    value: str,
    secret: bool,
    description: str | None,
    room: bool = True,
) -> None:
    """Adds (or changes) a var of a project or connection in ``db`` (flushed, not
    committed); Conflict, before any change, when it would claim another connection's
    routing value (``routes``). ``description`` None keeps the var's. ``room`` False: the
    caller checks its project's room (``check_room``) once its changes are all made."""
    routes.check_unclaimed(db, scope, name, value, secret)
    var = db.exec(select(Var).where(Var.scope_id == scope, Var.name == name)).first()
    old = _stored_size(name, var.value, var.description) if var is not None else 0
    var = var or Var(scope_id=scope, name=name)
    stored = sealer.seal(value) if secret else value
    if room:
        text = var.description if description is None else description
        _check_room(db, scope, name, _stored_size(name, stored, text), old)
    var.value = stored
    var.is_secret = secret
    var.route_key = routes.claim(scope, name, value)
    if description is not None:
        var.description = description
    db.add(var)
    routes.write(db)  # a claim refused here, not by the next query's autoflush


def delete_connection(db: Session, connection_id: str) -> None:
    """A connection and its vars."""
    for var in db.exec(select(Var).where(Var.scope_id == connection_id)):
        db.delete(var)
    conn = db.get(Connection, connection_id)
    if conn is not None:
        db.delete(conn)


def _execute(
    db: Session,
    a: Action,
    project: Project | None,
    name: str,
    lines: list[tuple[str, str]],
    sealer: Sealer,
) -> Project | None:
    def said(subject: str, effect: str) -> None:
        lines.append((OUT, f'[exec] {a.type} "{a.key}": {subject} {effect}'))

    if a.type == "create_project":
        project = Project(
            project_id=ids.new_id("prj"),
            name=name,
            display_name=a.args["display_name"],
            created_us=timefmt.now_us(),
        )
        db.add(project)
        said(project.project_id, "created")
        return project
    assert project is not None
    pid = project.project_id
    if a.type == "update_project":
        project.display_name = a.args["display_name"]
        db.add(project)
        said(pid, "updated")
    elif a.type == "set_var":
        scope = pid
        if a.args.get("connection"):
            conn = db.exec(
                select(Connection).where(
                    Connection.project_id == pid, Connection.name == a.args["connection"]
                )
            ).one()
            scope = conn.connection_id
        put_var(
            db,
            sealer,
            scope,
            a.args["name"],
            a.args["value"],
            bool(a.args["secret"]),
            a.args["description"],
            room=False,  # (checked once, after every action: ``apply_manifest``)
        )
        said(scope, "updated")
    elif a.type == "delete_var":
        for var in db.exec(select(Var).where(Var.scope_id == pid, Var.name == a.args["name"])):
            db.delete(var)
        said(pid, "deleted")
    elif a.type in ("create_connection", "update_connection"):
        if a.args["integration"] not in INTEGRATIONS:  # exit 1, as AutoKitteh's action failure
            raise AKError(f"action {a.type} {a.key}: {unknown(a.args['integration'])}")
        if a.type == "create_connection":
            conn = Connection(
                connection_id=ids.new_id("con"),
                project_id=pid,
                name=a.args["name"],
                integration=a.args["integration"],
            )
            said(conn.connection_id, "created")
        else:
            found = db.get(Connection, a.args["connection_id"])
            assert found is not None
            conn, conn.integration = found, a.args["integration"]
            said(conn.connection_id, "updated")
        db.add(conn)
    elif a.type == "delete_connection":
        delete_connection(db, a.args["connection_id"])
        said(a.args["connection_id"], "deleted")
    elif a.type == "create_trigger":
        fields = {k: v for k, v in a.args.items() if k != "trigger_id"}
        trg = Trigger(trigger_id=ids.new_id("trg"), project_id=pid, **fields)
        if trg.source_type == "webhook":
            trg.webhook_slug = ids.new_slug()
        db.add(trg)
        said(trg.trigger_id, "created")
        if trg.webhook_slug:
            lines.append(
                (
                    ERR,
                    f'[!!!!] trigger "{trg.name}" created, webhook path is '
                    f'"/webhooks/{trg.webhook_slug}"',
                )
            )
    elif a.type == "update_trigger":
        current = db.get(Trigger, a.args["trigger_id"])
        assert current is not None
        for k, v in a.args.items():
            setattr(current, k, v)  # the webhook slug is not among the fields: it survives
        db.add(current)
        said(current.trigger_id, "updated")
    elif a.type == "delete_trigger":
        gone = db.get(Trigger, a.args["trigger_id"])
        if gone is not None:
            db.delete(gone)
        said(a.args["trigger_id"], "deleted")
    else:
        raise InvalidArgument(f"unknown manifest action {a.type!r}")
    db.flush()
    return project


def apply_manifest(
    db: Session,
    text: str,
    sealer: Sealer,
    project_name: str = "",
    skip_existing_secrets: bool = False,
    project_id: str = "",
) -> dict[str, Any]:
    """Returns the transcript lines ((stream, text) pairs) and the project's id.
    ``project_id``: the project must be the one of this id (none is made)."""
    m = parse_manifest(text, project_name)
    if m.project is None:
        return {"lines": [], "project_id": "", "project_name": "", "created": False}
    project, cur = current_state(db, m.project.name, sealer)
    if project_id and cur.project_id != project_id:
        raise Conflict(
            f'project "{m.project.name}" is no longer the project {project_id} that was '
            "checked (deleted or made again meanwhile): nothing was applied"
        )
    plan = plan_manifest(m, cur, skip_existing_secrets)
    lines: list[tuple[str, str]] = [(OUT, line) for line in plan.lines]
    exec_lines: list[tuple[str, str]] = []
    # The vars' room is checked once, on what the manifest leaves (its new vars are set
    # before the ones it drops are deleted: a rename of big vars must not be refused).
    before = vars_size(db, cur.project_id) if cur.project_id else 0
    for action in plan.actions:
        project = _execute(db, action, project, m.project.name, exec_lines, sealer)
    if project is not None and any(a.type == "set_var" for a in plan.actions):
        check_room(db, project.project_id, before)
    # AutoKitteh prints the webhook paths after all [exec] lines.
    lines += [x for x in exec_lines if x[0] == OUT] + [x for x in exec_lines if x[0] == ERR]
    routes.write(db, commit=True)
    assert project is not None
    return {
        "lines": [list(x) for x in lines],
        "project_id": project.project_id,
        "project_name": project.name,
        "created": not cur.project_id,
    }
