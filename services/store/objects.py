"""The store's operations that make, show and delete whole objects for the CLI: projects,
builds, deployments, sessions, connections, integrations and hand-made events.

Deleting never pulls an object from under something that still needs it: a project with a
deployment that is not inactive, a build a deployment uses, a session that has not ended or a
connection a trigger names is refused, saying what to do first.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import yaml
from akcore import connstatus, eventdata, ids, timefmt, wire
from akcore import requests as rq
from akcore.datakey import Keyring
from akcore.errors import Conflict, InvalidArgument, NotFound, shown
from akcore.integrations import DESCRIPTIONS, INTEGRATIONS, integration_id, unknown
from akcore.manifest import MAX_CONNECTIONS, MAX_TEXT, parse_manifest
from akcore.names import name_problem
from akcore.planning import Current, plan_manifest
from akcore.secrets import Sealer
from sqlalchemy import Engine
from sqlalchemy import select as sa_select
from sqlmodel import Session as DB
from sqlmodel import col, delete, func, select

from .manifests import current_state, delete_connection
from .models import (
    Build,
    Connection,
    Delivery,
    Deployment,
    DispatchNote,
    EventRow,
    Project,
    Session,
    SessionRecord,
    SpanRow,
    Subscription,
    Trigger,
    Var,
)

_WORDS = ("whiskers", "purr", "tabby", "mittens", "paws", "meow", "kitten", "tail", "nap")
DISPLAY_NAMES = {"http": "HTTP", "github": "GitHub", "slack": "Slack"}
# The server's own secret of an integration, which a connection may do without.
SERVER_SECRETS = {"github": "GITHUB_WEBHOOK_SECRET", "slack": "SLACK_SIGNING_SECRET"}

ProjectLookup = Callable[[DB, str], Project]


def within(q: Any, table: Any, project_ids: list[str]) -> Any:
    """``q`` narrowed to the rows of the projects ``project_ids`` (none: every project's)."""
    return q.where(col(table.project_id).in_(project_ids)) if project_ids else q


# What a build's view reads of its row: not its files (up to 6 MiB each; a project keeps
# 200 builds), only their stored size and the first bytes, which say how many there are.
_BUILD_VIEW = (
    col(Build.build_id),
    col(Build.project_id),
    col(Build.created_us),
    func.length(Build.files),
    func.substr(Build.files, 1, 5),
)


def _build_view(row: Any, project_name: str) -> dict[str, Any]:
    """A build's view from a row of ``_BUILD_VIEW``. Listing a project's builds unpacked
    every build's files to count them: 200 builds of 6 MiB held the store, which answers
    one request at a time, for seconds per list (one token's loop of lists, every project's
    sessions waiting on the store)."""
    build_id, project_id, created_us, size, head = row
    return {
        "build_id": build_id,
        "project_id": project_id,
        "project": project_name,
        "created_at": timefmt.rfc3339(created_us),
        "files": _map_length(bytes(head)),
        "size": int(size),
    }


def _map_length(head: bytes) -> int:
    """How many entries the msgpack map starting with ``head`` (its first 5 bytes) has."""
    if not head:
        return 0
    if 0x80 <= head[0] <= 0x8F:  # fixmap
        return head[0] & 0x0F
    if head[0] == 0xDE:  # map 16
        return int.from_bytes(head[1:3], "big")
    if head[0] == 0xDF:  # map 32
        return int.from_bytes(head[1:5], "big")
    raise ValueError(f"a build's files are not a msgpack map (first byte {head[0]:#x})")


def _connection_view(c: Connection, project_name: str, status: dict[str, str]) -> dict[str, Any]:
    return {
        "connection_id": c.connection_id,
        "integration_id": integration_id(c.integration),
        "integration": c.integration,
        "project_id": c.project_id,
        "project": project_name,
        "name": c.name,
        "status": status,
        "capabilities": {"supports_connection_test": True},
        "links": {
            "self_url": f"/connections/{c.connection_id}",
            "test_url": f"/connections/{c.connection_id}/test",
        },
    }


class Objects:
    """Operations on whole objects; ``project`` finds a project by name or id."""

    def __init__(
        self, engine: Engine, sealer: Sealer, project: ProjectLookup, keys: Keyring
    ) -> None:
        self.engine, self.sealer, self._project, self.keys = engine, sealer, project, keys

    def routes(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "project.create": self.project_create,
            "project.delete": self.project_delete,
            "project.export": self.project_export,
            "manifest.plan": self.manifest_plan,
            "build.list": self.build_list,
            "build.describe": self.build_describe,
            "build.download": self.build_download,
            "build.delete": self.build_delete,
            "deployment.delete": self.deployment_delete,
            "session.delete": self.session_delete,
            "connection.create": self.connection_create,
            "connection.list": self.connection_list,
            "connection.get": self.connection_get,
            "connection.test": self.connection_test,
            "connection.delete": self.connection_delete,
            "integration.list": self.integration_list,
            "event.store": self.event_store,
        }

    # --- projects

    def project_create(self, req: rq.ProjectCreate) -> dict[str, Any]:
        with DB(self.engine) as db:
            name = req.name or f"{'_'.join(random.sample(_WORDS, 2))}_{random.randint(0, 9999):04}"
            problem = name_problem(name)
            if problem:
                raise InvalidArgument(f"parse project name: invalid name {shown(name)}: {problem}")
            if len(req.display_name) > MAX_TEXT:
                raise InvalidArgument(
                    f"display name of {len(req.display_name):,} characters, over the limit "
                    f"of {MAX_TEXT:,}"
                )
            if db.exec(select(Project).where(Project.name == name)).first():
                raise Conflict(f'project "{name}" already exists')
            p = Project(
                project_id=ids.new_id("prj"),
                name=name,
                display_name=req.display_name,
                created_us=timefmt.now_us(),
            )
            db.add(p)
            db.commit()
            return {"project_id": p.project_id, "name": name}

    def project_delete(self, req: rq.ProjectRef) -> None:
        """As AutoKitteh: only when every deployment is inactive (and, here, no session of
        the project is still running); then the project and everything of it go together."""
        with DB(self.engine) as db:
            p = self._project(db, req.project)
            pid = p.project_id
            busy = db.exec(
                select(Deployment).where(
                    Deployment.project_id == pid, Deployment.state != "INACTIVE"
                )
            ).first()
            if busy is not None:
                raise Conflict(
                    f'project "{p.name}" has deployment {busy.deployment_id} in state '
                    f"{busy.state}: deactivate it (`ak deployment deactivate "
                    f"{busy.deployment_id}`) and wait until it is INACTIVE"
                )
            self._refuse_live(db, Session.project_id == pid, f'project "{p.name}"')
            sids = list(db.exec(select(Session.session_id).where(Session.project_id == pid)))
            cids = list(
                db.exec(select(Connection.connection_id).where(Connection.project_id == pid))
            )
            eids = list(db.exec(select(EventRow.event_id).where(EventRow.project_id == pid)))
            for cid in cids:
                delete_connection(db, cid)
            _purge(db, SessionRecord.session_id, sids)
            _purge(db, SpanRow.session_id, sids)
            _purge(db, DispatchNote.event_id, eids)
            _purge(db, Delivery.event_id, eids)
            for column in (
                Session.project_id,
                Subscription.project_id,
                Deployment.project_id,
                Build.project_id,
                Trigger.project_id,
                EventRow.project_id,
                Var.scope_id,
            ):
                _purge(db, column, [pid])
            db.delete(p)
            db.commit()

    def project_export(self, req: rq.ProjectExport) -> dict[str, Any]:
        """The project's files (those of its newest build) and a v2 manifest made from what
        the store holds; vars' values only with ``include_contents``."""
        with DB(self.engine) as db:
            p = self._project(db, req.project)
            # The newest build's id first (off the index), then its files: the project's
            # builds were sorted with theirs (200 of 6 MiB), seconds of the store an export.
            newest = db.exec(
                select(Build.build_id)
                .where(Build.project_id == p.project_id)
                .order_by(col(Build.created_us).desc(), col(Build.build_id).desc())
                .limit(1)
            ).first()
            b = db.get(Build, newest) if newest is not None else None
            files = wire.unpack(b.files) if b is not None else {}
            _, cur = current_state(db, p.name, self.sealer)
        project: dict[str, Any] = {"name": p.name}
        if p.display_name:
            project["display_name"] = p.display_name
        if cur.connections:
            project["connections"] = [
                {"name": n, "integration": c["integration"]} for n, c in cur.connections.items()
            ]
        if cur.triggers:
            project["triggers"] = [_exported_trigger(n, t) for n, t in cur.triggers.items()]
        if cur.vars:
            project["vars"] = [
                {
                    "name": n,
                    "value": v["value"] if req.include_contents else "",
                    **({"secret": True} if v["secret"] else {}),
                    **({"description": v["description"]} if v["description"] else {}),
                }
                for n, v in cur.vars.items()
            ]
        manifest = yaml.safe_dump({"version": "v2", "project": project}, sort_keys=False)
        return {"files": files, "manifest": manifest, "project_name": p.name}

    def manifest_plan(self, req: rq.ManifestPlan) -> dict[str, Any]:
        """What ``manifest.apply`` would do, changing nothing."""
        m = parse_manifest(req.text, req.project_name)
        if m.project is None:
            return {"lines": [], "actions": []}
        with DB(self.engine) as db:
            cur = Current()
            if not req.from_scratch:
                cur = current_state(db, m.project.name, self.sealer)[1]
        plan = plan_manifest(m, cur, bool(req.skip_existing_secrets))
        actions = [{"type": a.type, "action": {"key": a.key, **a.args}} for a in plan.actions]
        return {"lines": plan.lines, "actions": actions}

    # --- builds and deployments

    def _build(self, db: DB, req: rq.BuildId) -> Build:
        b = db.get(Build, req.build_id)
        if b is None:
            raise NotFound(f'build ID "{req.build_id}" not found')
        if req.project and b.project_id != self._project(db, req.project).project_id:
            raise NotFound(f'build ID "{req.build_id}" not found in project "{req.project}"')
        return b

    def build_list(self, req: rq.ProjectRef) -> list[dict[str, Any]]:
        with DB(self.engine) as db:
            p = self._project(db, req.project)
            q = sa_select(*_BUILD_VIEW).where(col(Build.project_id) == p.project_id)
            rows = db.execute(q.order_by(col(Build.created_us).desc()))
            return [_build_view(row, p.name) for row in rows]

    def build_describe(self, req: rq.BuildId) -> dict[str, Any]:
        with DB(self.engine) as db:
            q = sa_select(*_BUILD_VIEW).where(col(Build.build_id) == req.build_id)
            row = db.execute(q).first()
            if row is None or (req.project and row[1] != self._project(db, req.project).project_id):
                self._build(db, req)  # (raises its NotFound)
            assert row is not None
            p = db.get(Project, row[1])
            return _build_view(row, p.name if p else "")

    def build_download(self, req: rq.BuildId) -> dict[str, Any]:
        with DB(self.engine) as db:
            b = self._build(db, req)
            return {"build_id": b.build_id, "files": wire.unpack(b.files)}

    def build_delete(self, req: rq.BuildId) -> None:
        """Refused while a deployment uses the build or a session runs it (a runner reads
        the build again when it resumes a session)."""
        with DB(self.engine) as db:
            b = self._build(db, req)
            used = db.exec(select(Deployment).where(Deployment.build_id == b.build_id)).first()
            if used is not None:
                raise Conflict(
                    f"build {b.build_id} is used by deployment {used.deployment_id} "
                    f"({used.state}): delete the deployment first"
                )
            self._refuse_live(db, Session.build_id == b.build_id, f"build {b.build_id}")
            db.delete(b)
            db.commit()

    def deployment_delete(self, req: rq.DeploymentDelete) -> None:
        """Only an INACTIVE deployment (as AutoKitteh); its ended sessions stay listed."""
        with DB(self.engine) as db:
            d = db.get(Deployment, req.deployment_id)
            if d is None:
                raise NotFound(f'deployment "{req.deployment_id}" not found')
            if d.state != "INACTIVE":
                raise Conflict(
                    f"deployment {d.deployment_id} is {d.state}: only an INACTIVE deployment "
                    f"can be deleted (`ak deployment deactivate {d.deployment_id}` first; a "
                    "draining one becomes INACTIVE when its last session ends)"
                )
            where = Session.deployment_id == d.deployment_id
            self._refuse_live(db, where, f"deployment {d.deployment_id}")
            db.delete(d)
            db.commit()

    def _refuse_live(self, db: DB, where: Any, what: str) -> None:
        live = db.exec(
            select(Session).where(where, col(Session.state).not_in(wire.FINAL_STATES))
        ).first()
        if live is not None:
            raise Conflict(
                f"{what} has session {live.session_id} in state {live.state}: wait for it to "
                f"end or stop it (`ak session stop {live.session_id}`)"
            )

    # --- sessions

    def session_delete(self, req: rq.SessionDelete) -> dict[str, Any]:
        """Deletes an ended session with its records and spans; returns what it was."""
        sid = req.session_id
        if not ids.is_id(sid, "ses"):
            raise InvalidArgument(f"invalid session id {sid!r}")
        with DB(self.engine) as db:
            s = db.get(Session, sid)
            if s is None:
                raise NotFound(f'session "{sid}" not found')
            if s.state not in wire.FINAL_STATES:
                raise Conflict(
                    f"session {sid} is {s.state}: only an ended session can be deleted "
                    f"(`ak session stop {sid}` first)"
                )
            view = {"session_id": sid, "project_id": s.project_id, "state": s.state}
            for column in (SessionRecord.session_id, SpanRow.session_id, Subscription.session_id):
                _purge(db, column, [sid])
            db.delete(s)
            db.commit()
            return view

    # --- connections and integrations

    def connection(self, db: DB, ref: str) -> Connection:
        if ids.is_id(ref, "con"):
            c = db.get(Connection, ref)
            if c is None:
                raise NotFound(f'connection "{ref}" not found')
            return c
        project, sep, name = ref.partition("/")
        if not sep:
            raise InvalidArgument(f'invalid connection name "{ref}": missing project prefix')
        if "/" in name:
            raise InvalidArgument(f'invalid connection name "{ref}": too many parts')
        pid = self._project(db, project).project_id
        c = db.exec(
            select(Connection).where(Connection.project_id == pid, Connection.name == name)
        ).first()
        if c is None:
            raise NotFound(f'connection "{ref}" not found')
        return c

    def _project_name(self, db: DB, project_id: str) -> str:
        p = db.get(Project, project_id)
        return p.name if p else ""

    def connection_create(self, req: rq.ConnectionCreate) -> dict[str, Any]:
        """A connection outside the manifest (a later deploy of a manifest without it
        deletes it, as AutoKitteh's does)."""
        integration = _integration(req.integration)
        problem = name_problem(req.name)
        if problem:
            raise InvalidArgument(f"invalid connection: name {shown(req.name)}: {problem}")
        with DB(self.engine) as db:
            p = self._project(db, req.project)
            if db.exec(
                select(Connection).where(
                    Connection.project_id == p.project_id, Connection.name == req.name
                )
            ).first():
                raise Conflict(f'connection "{p.name}/{req.name}" already exists')
            count = select(func.count()).select_from(Connection)
            if db.exec(count.where(Connection.project_id == p.project_id)).one() >= (
                MAX_CONNECTIONS
            ):
                raise InvalidArgument(
                    f'project "{p.name}" has {MAX_CONNECTIONS} connections, the limit: '
                    "delete one first (`ak connection delete`)"
                )
            c = Connection(
                connection_id=ids.new_id("con"),
                project_id=p.project_id,
                name=req.name,
                integration=integration,
            )
            db.add(c)
            db.commit()
            return {"connection_id": c.connection_id}

    def connection_list(self, req: rq.ConnectionList) -> list[dict[str, Any]]:
        wanted = _integration(req.integration) if req.integration else ""
        with DB(self.engine) as db:
            q = within(select(Connection), Connection, req.within)
            q = q.order_by(Connection.project_id, Connection.name)
            if req.project:
                q = q.where(Connection.project_id == self._project(db, req.project).project_id)
            names = {p.project_id: p.name for p in db.exec(select(Project))}
            views = [
                _connection_view(c, names.get(c.project_id, ""), self._status(db, c))
                for c in db.exec(q)
            ]
        return [v for v in views if not wanted or v["integration"] == wanted]

    def connection_get(self, req: rq.ConnectionRef) -> dict[str, Any]:
        with DB(self.engine) as db:
            c = self.connection(db, req.connection)
            return _connection_view(c, self._project_name(db, c.project_id), self._status(db, c))

    def connection_test(self, req: rq.ConnectionRef) -> dict[str, Any]:
        """The connection's status from its vars, by AutoKitteh's rules for its integration
        (``akcore.connstatus``). Unlike AutoKitteh's test it calls no third party: the
        credentials themselves are not tried."""
        with DB(self.engine) as db:
            return self._status(db, self.connection(db, req.connection))

    def _status(self, db: DB, c: Connection) -> dict[str, str]:
        rows = db.exec(select(Var).where(Var.scope_id == c.connection_id))
        plain = {v.name: self.sealer.open(v.value) for v in rows}
        server_secret = bool(os.environ.get(SERVER_SECRETS.get(c.integration, ""), ""))
        got = connstatus.status(c.integration, plain, server_secret)
        return {"code": got.code, "message": got.message}

    def connection_delete(self, req: rq.ConnectionRef) -> None:
        with DB(self.engine) as db:
            c = self.connection(db, req.connection)
            used = db.exec(
                select(Trigger).where(
                    Trigger.project_id == c.project_id, Trigger.connection == c.name
                )
            ).first()
            if used is not None:
                raise Conflict(
                    f"cannot delete a connection that has associated triggers (trigger "
                    f'"{used.name}")'
                )
            delete_connection(db, c.connection_id)
            db.commit()

    def integration_list(self, req: rq.Empty) -> list[dict[str, Any]]:
        return [
            {
                "integration_id": integration_id(name),
                "unique_name": name,
                "display_name": DISPLAY_NAMES.get(name, name),
                "description": DESCRIPTIONS.get(name, ""),
            }
            for name in INTEGRATIONS
        ]

    # --- events

    def event_store(self, req: rq.EventStore) -> None:
        """Keeps a hand-made event without dispatching it (``ak event save``)."""
        with DB(self.engine) as db:
            db.add(
                EventRow(
                    event_id=req.event_id,
                    project_id=req.project_id,
                    destination_id=req.destination_id,
                    event_type=req.event_type,
                    data=eventdata.seal(req.data, req.project_id, req.event_id, self.keys),
                    sealed_memo=eventdata.seal_memo(
                        req.memo, req.project_id, req.event_id, self.keys
                    ),
                    created_us=timefmt.now_us(),
                )
            )
            db.commit()


def _integration(ref: str) -> str:
    """The unique name of an integration given by name or ``int_`` id."""
    by_id = {integration_id(n): n for n in INTEGRATIONS}
    name = by_id.get(ref, ref)
    if name not in INTEGRATIONS:
        raise NotFound(unknown(ref))
    return name


def _purge(db: DB, column: Any, values: list[str]) -> None:
    """Deletes the rows whose ``column`` is one of ``values``."""
    if values:
        db.connection().execute(delete(column.class_).where(col(column).in_(values)))


def _exported_trigger(name: str, t: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if t.get("source_type") == "webhook":
        out["webhook"] = {}
    elif t.get("source_type") == "schedule":
        out["schedule"] = t["schedule"]
    elif t.get("connection"):
        out["connection"] = t["connection"]
    for k in ("event_type", "filter", "call"):
        if t.get(k):
            out[k] = t[k]
    out["is_durable"] = bool(t.get("is_durable"))
    if t.get("is_sync"):
        out["is_sync"] = True
    return out
