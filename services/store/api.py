"""The store's request/reply operations (``ak.store.<op>``), one method each."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from akcore import credheaders, eventdata, github, ids, keycheck, scope, slack, timefmt, wire
from akcore import requests as rq
from akcore.buildfiles import check_build
from akcore.datakey import Keyring, SealError, is_sealed
from akcore.errors import Conflict, InvalidArgument, NotFound, shown
from akcore.integrations import connection_env
from akcore.manifest import MAX_TRIGGERS, parse_manifest
from akcore.names import name_problem
from akcore.secrets import Sealer
from sqlalchemy import Engine
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session as DB
from sqlmodel import col, func, select

from . import routes
from .history import make_room_for_build, make_room_for_deployment
from .manifests import apply_manifest, check_room, put_var, vars_size
from .materialize import insert_new
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
from .objects import Objects, within
from .sealed import open_record, open_session
from .tokens import Tokens

log = logging.getLogger(__name__)

MAX_VAR = 1024 * 1024
# Live subscriptions (``subscribe``): of one session, and to one trigger or connection from
# all the project's sessions (every event on it is judged against each one's filter).
MAX_SESSION_SUBSCRIPTIONS = 100
MAX_SOURCE_SUBSCRIPTIONS = 5000
# ``dispatch.targets`` answers a trigger's subscriptions in pages of at most this many, and
# about this many bytes (NATS messages are 1 MiB by default).
SUBSCRIPTIONS_PAGE = 1000
SUBSCRIPTIONS_PAGE_BYTES = 512 * 1024


def webhook_url(slug: str) -> str:
    """As AutoKitteh: https://<WEBHOOK_ADDRESS or SERVICE_ADDRESS>/webhooks/<slug>, or the
    relative path when neither is set."""
    host = os.environ.get("WEBHOOK_ADDRESS") or os.environ.get("SERVICE_ADDRESS")
    return f"https://{host}/webhooks/{slug}" if host else f"webhooks/{slug}"


def store_public_url(project_id: str) -> str:
    """Where a project's published values are served (``<url>/<key>``), as webhook URLs are
    made: https://<WEBHOOK_ADDRESS or SERVICE_ADDRESS>/store/<project id>, or relative."""
    host = os.environ.get("WEBHOOK_ADDRESS") or os.environ.get("SERVICE_ADDRESS")
    return f"https://{host}/store/{project_id}" if host else f"store/{project_id}"


def env_id(p: Project) -> str:
    """The id of a project's only environment, "default" (stable, derived from the project)."""
    return ids.derived_id("env", p.created_us // 1000, p.project_id)


SESSION_STATES = ("CREATED", "RUNNING", *wire.FINAL_STATES)
DEFAULT_PAGE, MAX_PAGE = 50, 1000
MAX_SCOPE_REFS = MAX_PAGE + 100  # (a session list's event ids and its other filters)
RECORDS_PAGE, RECORDS_BYTES = 1000, 1 << 20  # a page of a session's records, at most
RECORDS_READ = 8  # records read from the database at a time, as a page fills
MAX_SPANS = 5000  # spans of a trace in one answer (each ~0.4 KB)
# A page of sessions, or the events listed, ends once it takes about this many bytes: a
# memo or an event type is as long as its maker wants (one project's three sessions with
# 3 MB memos made every session list over the NATS message limit, ``ak session list`` and
# the web UI's Sessions page of every other project's users included).
LIST_BYTES = 4 << 20
# A page of sessions ends once it has read this many bytes of their inputs (a session's
# inputs, up to 8 MiB, are opened to show its memo, sealed with them).
LIST_READ_BYTES = 8 << 20
LIST_READ_ROWS = 8  # sessions read from the database at a time, as a page fills
NOTES_BYTES = 32 << 10  # of an event's notes in ``event.get`` (ingress keeps 64 KiB room)


def _within_bytes(views: list[dict[str, Any]], budget: int = LIST_BYTES) -> int:
    """How many of ``views`` (at least one) fit ``budget`` bytes, encoded."""
    size = 0
    for i, v in enumerate(views):
        size += len(wire.pack(v))
        if i and size > budget:
            return i
    return len(views)


def _inputs_size(inputs: Any) -> int:
    """About how many bytes a session's stored inputs take (sealed: one text)."""
    if not isinstance(inputs, dict):
        return 0
    return sum(len(v) if isinstance(v, str | bytes) else len(wire.pack(v)) for v in inputs.values())


def _page_after(token: str) -> tuple[int, str]:
    """The (created_us, session_id) a ``next_page_token`` continues after."""
    created, _, sid = token.partition(".")
    if not created.isdigit() or len(created) > 18 or not sid.startswith("ses_"):
        raise InvalidArgument(
            f"invalid page token {token!r}: use the next-page-token of the previous page"
        )
    return int(created), sid


def _project_view(p: Project) -> dict[str, Any]:
    return {"project_id": p.project_id, "name": p.name, "display_name": p.display_name}


def _time_us(text: str, name: str) -> int:
    try:
        return timefmt.parse_us(str(text))
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{name} {text!r} is not a time: use RFC 3339, as 2026-12-05T09:00:00Z"
        ) from None


def _trigger_view(t: Trigger, project_name: str = "") -> dict[str, Any]:
    view = t.model_dump()
    view["project"] = project_name
    return view


def _session_view(s: Session, project_name: str) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "project_id": s.project_id,
        "project": project_name,
        "deployment_id": s.deployment_id,
        "build_id": s.build_id,
        "event_id": s.event_id,
        "trigger_id": s.trigger_id,
        "parent_session_id": s.parent_session_id,
        "inputs": s.inputs,
        "memo": {},  # (sealed with the inputs: open_session)
        "entrypoint": s.entrypoint,
        "state": s.state,
        "is_durable": s.is_durable,
        "error": s.error,
        "traceback": s.traceback,
        "created_at": timefmt.rfc3339(s.created_us),
        "updated_at": timefmt.rfc3339(s.updated_us),
    }


def _event_view(e: EventRow, keys: Keyring) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "project_id": e.project_id,
        "destination_id": e.destination_id,
        "event_type": e.event_type,
        "memo": _event_memo(e, keys),
        "seq": e.seq,
        "created_at": timefmt.rfc3339(e.created_us),
    }


# What an event's view reads of its row: everything but its data.
_EVENT_COLUMNS = EventRow.__table__.columns  # type: ignore[attr-defined]
_EVENT_VIEW = tuple(c for c in _EVENT_COLUMNS if c.name != "data")


def _event_memo(e: EventRow, keys: Keyring) -> dict[str, str]:
    """The event's memo, opened (rows of earlier versions keep it in the clear); empty,
    said in the log, when it does not open (sealed with a key this store lacks)."""
    if not e.sealed_memo:
        return e.memo
    try:
        return eventdata.open_memo(e.sealed_memo, e.project_id, e.event_id, keys)
    except SealError as err:
        log.warning("event %s: its memo could not be opened: %s", e.event_id, err.message)
        return {}


def _notes_shown(notes: list[DispatchNote]) -> list[dict[str, str]]:
    """An event's dispatch notes, the first that fit ``NOTES_BYTES`` and then one saying
    how many more there are (one per trigger and subscription the event was offered to:
    thousands would not fit the answer beside an event of nearly the message limit, which
    ingress keeps room for)."""
    shown: list[dict[str, str]] = []
    size = 0
    for i, n in enumerate(notes):
        note = {"source": n.source, "note": n.note, "at": timefmt.rfc3339(n.created_us)}
        size += len(wire.pack(note))
        if size > NOTES_BYTES:
            left = f"{len(notes) - i} more notes not shown (they take over {NOTES_BYTES} bytes)"
            return [*shown, {"source": "", "note": left, "at": note["at"]}]
        shown.append(note)
    return shown


def _sealed_data(e: EventRow, keys: Keyring) -> bytes:
    """The event's data sealed, as it rests (rows kept by earlier versions are sealed now)."""
    if is_sealed(e.data):
        return e.data
    return eventdata.seal(wire.unpack(e.data), e.project_id, e.event_id, keys)


def _event_data(e: EventRow, keys: Keyring) -> Any:
    """The event's data, opened; raises SealError."""
    if is_sealed(e.data):
        return eventdata.open_data(e.data, e.project_id, e.event_id, keys)
    return wire.unpack(e.data)


class StoreApi:
    """The store's operations; ``routes`` binds each to its declaration in ``akcore.ops``."""

    def __init__(self, engine: Engine, sealer: Sealer, keys: Keyring) -> None:
        self.engine, self.sealer, self.keys = engine, sealer, keys
        self.tokens = Tokens(engine)
        self.objects = Objects(engine, sealer, self._project, keys)

    def routes(self) -> dict[str, Callable[[Any], Any]]:
        """The method that answers each store operation of ``akcore.ops``."""
        return {
            "project.list": self.project_list,
            "project.get": self.project_get,
            "project.active": self.project_active,
            "manifest.apply": self.manifest_apply,
            "build.create": self.build_create,
            "build.get": self.build_get,
            "deployment.create": self.deployment_create,
            "deployment.activate": self.deployment_activate,
            "deployment.deactivate": self.deployment_deactivate,
            "deployment.get": self.deployment_get,
            "deployment.list": self.deployment_list,
            "trigger.create": self.trigger_create,
            "trigger.delete": self.trigger_delete,
            "trigger.get": self.trigger_get,
            "trigger.list": self.trigger_list,
            "webhook.lookup": self.webhook_lookup,
            "dispatch.targets": self.dispatch_targets,
            "source.resolve": self.source_resolve,
            "github.route": self.github_route,
            "slack.route": self.slack_route,
            "dispatch.note": self.dispatch_note,
            "schedule.list": self.schedule_list,
            "subscription.create": self.subscription_create,
            "subscription.delete": self.subscription_delete,
            "session.env": self.session_env,
            "env.list": self.env_list,
            "var.set": self.var_set,
            "connection.init": self.connection_init,
            "var.get": self.var_get,
            "var.delete": self.var_delete,
            "session.list": self.session_list,
            "session.get": self.session_get,
            "session.states": self.session_states,
            "session.records": self.session_records,
            "session.trace": self.session_trace,
            "event.list": self.event_list,
            "event.get": self.event_get,
            "token.add": self.tokens.add,
            "token.check": self.tokens.check,
            "scope.resolve": self.scope_resolve,
            "auth.list_tokens": self.tokens.list,
            "auth.revoke_token": self.tokens.revoke,
            **self.objects.routes(),
        }

    # --- lookups shared by the operations

    def _project(self, db: DB, name_or_id: str) -> Project:
        if not name_or_id:
            raise InvalidArgument("missing project name or id")
        if ids.is_id(name_or_id, "prj"):
            p = db.get(Project, name_or_id)
        else:
            p = db.exec(select(Project).where(Project.name == name_or_id)).first()
        if p is None:
            raise NotFound(f'project "{name_or_id}" not found')
        return p

    def _trigger_id(self, db: DB, project: str, trigger: str) -> str:
        """The id of ``trigger``: a trg_ id as it is, or the name of a trigger of ``project``."""
        if ids.is_id(trigger, "trg"):
            return trigger
        if not project:
            raise InvalidArgument(f'trigger "{trigger}" is a name: give its project too')
        project_id = self._project(db, project).project_id
        t = db.exec(
            select(Trigger).where(Trigger.project_id == project_id, Trigger.name == trigger)
        ).first()
        if t is None:
            raise NotFound(f'trigger "{trigger}" not found in project "{project}"')
        return t.trigger_id

    def _offered_to(self, db: DB, q: Any, trigger_id: str) -> Any:
        """``q`` narrowed to the events offered to a trigger: a webhook's or a schedule's
        own, or those of its connection (of its event type, when it names one); whether
        its filter took them is in their dispatch notes."""
        t = db.get(Trigger, trigger_id)
        if t is None or not t.connection:  # (a deleted trigger's events still name it)
            return q.where(EventRow.destination_id == trigger_id)
        conn = db.exec(
            select(Connection).where(
                Connection.project_id == t.project_id, Connection.name == t.connection
            )
        ).first()
        q = q.where(EventRow.destination_id == (conn.connection_id if conn else trigger_id))
        return q.where(EventRow.event_type == t.event_type) if t.event_type else q

    def _session_view(self, s: Session, names: dict[str, str]) -> dict[str, Any]:
        return open_session(_session_view(s, names.get(s.project_id, "")), self.keys)

    def _names(self, db: DB) -> dict[str, str]:
        return {p.project_id: p.name for p in db.exec(select(Project))}

    def _session_id(self, db: DB, ref: str) -> str:
        """A session id as given, or the newest session of the named project."""
        if ids.is_id(ref, "ses"):
            return ref
        if ids.id_prefix(ref) not in (None, "prj"):
            raise InvalidArgument(f"{ref!r} is neither a session id nor a project")
        try:
            p = self._project(db, ref)
        except NotFound:
            if ref.startswith("ses_"):  # a mistyped or cut session id, most likely
                raise NotFound(f'session "{ref}" not found (nor a project of that name)') from None
            raise
        s = db.exec(
            select(Session)
            .where(Session.project_id == p.project_id)
            .order_by(col(Session.created_us).desc(), col(Session.session_id).desc())
        ).first()
        if s is None:
            raise NotFound(f'project "{ref}" has no sessions')
        return s.session_id

    def scope_resolve(self, req: rq.ScopeResolve) -> list[str]:
        """The id of the project each reference names or belongs to ("" for one that names
        nothing); see ``akcore.scope``."""
        if len(req.refs) > MAX_SCOPE_REFS:
            raise InvalidArgument(f"at most {MAX_SCOPE_REFS} references, not {len(req.refs)}")
        if any(len(ref) not in (2, 3) for ref in req.refs):
            raise InvalidArgument("each reference is [kind, value] or [kind, value, project]")
        # Events come by the thousand (a page of events, the sessions of each): one query.
        events = [ref[1] for ref in req.refs if ref[0] == scope.EVENT]
        with DB(self.engine) as db:
            of_event: dict[str, str] = {}
            if events:
                q = select(EventRow.event_id, EventRow.project_id)
                of_event = dict(db.exec(q.where(col(EventRow.event_id).in_(events))).all())
            return [
                of_event.get(ref[1], "") if ref[0] == scope.EVENT else self._project_of(db, *ref)
                for ref in req.refs
            ]

    def _project_of(self, db: DB, kind: str, ref: str, project: str = "") -> str:
        """The project id of one reference ("" when it names nothing), by the lookups the
        operations themselves use (events: ``scope_resolve`` finds them all at once)."""
        if kind not in scope.KINDS:
            raise InvalidArgument(f"unknown kind of reference {kind!r}")
        trg = ids.is_id(ref, "trg")
        try:
            row: Any = None
            if kind == scope.PROJECT:
                row = self._project(db, ref)
            elif kind == scope.ENV:
                row = self._env_project(db, rq.VarScope(env=ref))
            elif kind == scope.CONNECTION or (kind == scope.DESTINATION and not trg):
                row = self.objects.connection(db, ref)
            elif kind in (scope.TRIGGER, scope.DESTINATION) and trg:
                row = db.get(Trigger, ref)
            elif kind == scope.TRIGGER:  # a name: looked up in the request's project
                row = self._project(db, project) if project else None
            elif kind == scope.SESSION_OR_PROJECT and not ids.is_id(ref, "ses"):
                row = self._project(db, ref)
            elif kind in (scope.SESSION, scope.SESSION_OR_PROJECT):
                row = db.get(Session, ref)
            elif kind == scope.BUILD:
                row = db.get(Build, ref)
            elif kind == scope.DEPLOYMENT:
                row = db.get(Deployment, ref)
        except (NotFound, InvalidArgument):  # (a malformed name names nothing either)
            return ""
        return str(row.project_id) if row is not None else ""

    # --- operations

    def project_list(self, req: rq.ProjectList) -> list[dict[str, Any]]:
        with DB(self.engine) as db:
            q = within(select(Project).order_by(Project.name), Project, req.within)
            return [_project_view(p) for p in db.exec(q)]

    def project_get(self, req: rq.ProjectRef) -> dict[str, Any]:
        with DB(self.engine) as db:
            return _project_view(self._project(db, req.project))

    def manifest_apply(self, req: rq.ManifestApply) -> dict[str, Any]:
        with DB(self.engine) as db:
            return apply_manifest(
                db,
                req.text,
                self.sealer,
                req.project_name,
                bool(req.skip_existing_secrets),
                req.project_id,
            )

    def build_create(self, req: rq.BuildCreate) -> str:
        files = req.files or {}
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in files.items()
        ):
            raise InvalidArgument("build files must map relative paths to bytes")
        check_build(files)
        with DB(self.engine) as db:
            p = self._project(db, req.project)
            make_room_for_build(db, p)
            b = Build(
                build_id=ids.new_id("bld"),
                project_id=p.project_id,
                files=wire.pack(files),
                created_us=timefmt.now_us(),
            )
            db.add(b)
            db.commit()
            return b.build_id

    def build_get(self, req: rq.BuildRef) -> dict[str, Any]:
        """A build's ids, and its files when asked (without them, its files are not read:
        up to 6 MiB, for a check that the build is there and whose it is)."""
        with DB(self.engine) as db:
            wanted: list[Any] = [col(Build.build_id), col(Build.project_id)]
            if req.with_files:
                wanted.append(col(Build.files))
            row = db.execute(sa_select(*wanted).where(wanted[0] == req.build_id)).first()
            if row is None:
                raise NotFound(f'build "{req.build_id}" not found')
            view: dict[str, Any] = {"build_id": row[0], "project_id": row[1]}
            if req.with_files:
                view["files"] = wire.unpack(row[2])
            return view

    def deployment_create(self, req: rq.DeploymentCreate) -> str:
        with DB(self.engine) as db:
            p = self._project(db, req.project)
            b = db.get(Build, req.build_id)
            if b is None or b.project_id != p.project_id:
                raise NotFound(f'build "{req.build_id}" not found in project "{p.name}"')
            make_room_for_deployment(db, p, b.build_id)
            d = Deployment(
                deployment_id=ids.new_id("dep"),
                project_id=p.project_id,
                build_id=b.build_id,
                created_us=timefmt.now_us(),
            )
            db.add(d)
            db.commit()
            return d.deployment_id

    def deployment_activate(self, req: rq.DeploymentRef) -> None:
        """Activates one deployment and retires the project's others in the same transaction."""
        with DB(self.engine) as db:
            d = db.get(Deployment, req.deployment_id)
            if d is None:
                raise NotFound(f'deployment "{req.deployment_id}" not found')
            others = db.exec(
                select(Deployment).where(
                    Deployment.project_id == d.project_id,
                    Deployment.state == "ACTIVE",
                    Deployment.deployment_id != d.deployment_id,
                )
            )
            for o in others:
                o.state = "DRAINING" if self._live(db, o.deployment_id) else "INACTIVE"
                db.add(o)
            d.state = "ACTIVE"
            db.add(d)
            db.commit()

    def deployment_get(self, req: rq.DeploymentRef) -> dict[str, Any]:
        with DB(self.engine) as db:
            d = db.get(Deployment, req.deployment_id)
            if d is None:
                raise NotFound(f'deployment "{req.deployment_id}" not found')
            return {**d.model_dump(), "created_at": timefmt.rfc3339(d.created_us)}

    def deployment_deactivate(self, req: rq.DeploymentRef) -> dict[str, Any]:
        """Retires a deployment: DRAINING while it has running sessions, then INACTIVE."""
        with DB(self.engine) as db:
            d = db.get(Deployment, req.deployment_id)
            if d is None:
                raise NotFound(f'deployment "{req.deployment_id}" not found')
            d.state = "DRAINING" if self._live(db, d.deployment_id) else "INACTIVE"
            db.add(d)
            db.commit()
            return {"state": d.state}

    def _live(self, db: DB, deployment_id: str) -> bool:
        return (
            db.exec(
                select(Session).where(
                    Session.deployment_id == deployment_id,
                    col(Session.state).not_in(wire.FINAL_STATES),
                )
            ).first()
            is not None
        )

    def trigger_create(self, req: rq.TriggerCreate) -> dict[str, Any]:
        """``ak trigger create``: one trigger, validated like a manifest's."""
        with DB(self.engine) as db:
            p = self._project(db, req.project)
            spec = {k: v for k, v in (req.trigger or {}).items() if v not in (None, "")}
            try:  # (a msgpack request may hold bytes, which no manifest does)
                text = json.dumps(
                    {"version": "v1", "project": {"name": p.name, "triggers": [spec]}}
                )
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"invalid trigger: {e}") from None
            m = parse_manifest(text)
            assert m.project is not None
            (t,) = m.project.triggers
            if db.exec(
                select(Trigger).where(Trigger.project_id == p.project_id, Trigger.name == t.name)
            ).first():
                raise Conflict(f'trigger "{t.name}" already exists in project "{p.name}"')
            count = select(func.count()).select_from(Trigger)
            if db.exec(count.where(Trigger.project_id == p.project_id)).one() >= MAX_TRIGGERS:
                raise InvalidArgument(
                    f'project "{p.name}" has {MAX_TRIGGERS} triggers, the limit: delete one first'
                )
            trg = Trigger(
                trigger_id=ids.new_id("trg"),
                project_id=p.project_id,
                name=t.name,
                **{**t.spec(), "is_durable": bool(spec.get("is_durable", False))},
            )
            if trg.source_type == "webhook":
                trg.webhook_slug = ids.new_slug()
            db.add(trg)
            db.commit()
            db.refresh(trg)
            return _trigger_view(trg, p.name)

    def trigger_delete(self, req: rq.TriggerRef) -> None:
        view = self.trigger_get(req)
        with DB(self.engine) as db:
            t = db.get(Trigger, view["trigger_id"])
            if t is not None:
                db.delete(t)
                db.commit()

    def deployment_list(self, req: rq.ProjectFilter) -> list[dict[str, Any]]:
        with DB(self.engine) as db:
            q = within(select(Deployment), Deployment, req.within)
            q = q.order_by(col(Deployment.created_us).desc())
            if req.project:
                q = q.where(Deployment.project_id == self._project(db, req.project).project_id)
            names = self._names(db)
            return [
                {
                    **d.model_dump(),
                    "project": names.get(d.project_id, ""),
                    "created_at": timefmt.rfc3339(d.created_us),
                }
                for d in db.exec(q)
            ]

    def trigger_list(self, req: rq.ProjectFilter) -> list[dict[str, Any]]:
        with DB(self.engine) as db:
            q = within(select(Trigger).order_by(Trigger.name), Trigger, req.within)
            if req.project:
                q = q.where(Trigger.project_id == self._project(db, req.project).project_id)
            names = self._names(db)
            return [_trigger_view(t, names.get(t.project_id, "")) for t in db.exec(q)]

    def trigger_get(self, req: rq.TriggerRef) -> dict[str, Any]:
        ref = req.trigger
        with DB(self.engine) as db:
            if ids.is_id(ref, "trg"):
                t = db.get(Trigger, ref)
            else:
                p = self._project(db, req.project)
                t = db.exec(
                    select(Trigger).where(Trigger.project_id == p.project_id, Trigger.name == ref)
                ).first()
            if t is None:
                raise NotFound(f'trigger "{ref}" not found')
            return _trigger_view(t, self._names(db).get(t.project_id, ""))

    def source_resolve(self, req: rq.SourceResolve) -> dict[str, Any]:
        """The trigger or connection of project ``project_id`` that ``source`` names (by
        name or id), as ``{"destination_id", "kind"}``: what events a subscription gets."""
        ref, pid = req.source, req.project_id
        with DB(self.engine) as db:
            found: list[Trigger | Connection]
            if ids.is_id(ref, "trg") or ids.is_id(ref, "con"):
                row = db.get(Trigger, ref) if ref.startswith("trg_") else db.get(Connection, ref)
                found = [row] if row is not None and row.project_id == pid else []
            else:
                found = [
                    *db.exec(select(Trigger).where(Trigger.project_id == pid, Trigger.name == ref)),
                    *db.exec(
                        select(Connection).where(
                            Connection.project_id == pid, Connection.name == ref
                        )
                    ),
                ]
            if not found:
                raise NotFound(f'source "{ref}" not found')
            if len(found) > 1:
                raise Conflict(
                    f'source "{ref}" names both a trigger and a connection: give its id instead'
                )
            (one,) = found
            if isinstance(one, Trigger):
                return {"destination_id": one.trigger_id, "kind": "trigger"}
            return {"destination_id": one.connection_id, "kind": "connection"}

    def github_route(self, req: rq.GithubRoute) -> dict[str, Any]:
        """Which connections a GitHub delivery is for, each proven by its own secret (which
        never leaves the store): ``status`` 200 with ``targets`` (each with the event id
        the delivery becomes for it, ``new`` when it was not delivered before), or 400/403
        with ``error`` when the connections it names all refused its signature; 200 with
        no targets when no connection of a project with an active deployment is for it, as
        AutoKitteh answers."""
        with DB(self.engine) as db:
            server_secret = os.environ.get("GITHUB_WEBHOOK_SECRET", "")
            if req.key:  # a connection's own webhook: its pat_secret signs
                found = self._connections(db, "github", "pat_key", req.key)
                refused = 400
                targets = [
                    c
                    for c, plain in found
                    if github.verify(
                        plain.get("pat_secret", ""),
                        req.body,
                        req.signature,
                        unsigned_ok="pat_secret" in plain,  # declared empty: no secret
                    )
                ]
            else:  # an app's webhook: the installation's connections, with the app's secret
                name = f"install_key__{req.app_id}__{req.installation_id}"
                found = self._connections(db, "github", name) if req.installation_id else []
                refused = 403  # (no installation: a repository's own webhook, not the app's)
                targets = [
                    c
                    for c, plain in found
                    if plain.get("app_id") == req.app_id
                    and github.verify(
                        plain.get("client_secret") or server_secret, req.body, req.signature
                    )
                ]
            if found and not targets:
                return {"status": refused, "error": "bad signature", "targets": []}
            digest = hashlib.sha256(req.body).hexdigest()
            claims = [self._claim(db, c, "github", req.delivery, digest) for c in targets]
            return {"status": 200, "targets": claims}

    def slack_route(self, req: rq.SlackRoute) -> dict[str, Any]:
        """Which connections a Slack request is for (by ``install_ids``), each proven by its
        own signing secret (or the server's ``SLACK_SIGNING_SECRET``): as ``github_route``.
        ``any_connection``: a URL verification, which names no team: good when any Slack
        connection's secret (or the server's) signed it."""
        with DB(self.engine) as db:
            server_secret = os.environ.get("SLACK_SIGNING_SECRET", "")
            if req.any_connection:
                secrets = [
                    plain.get("private_signing_secret", "")
                    for _, plain in self._connections(db, "slack", "install_ids")
                ]
                ok = any(
                    slack.verify(x, req.timestamp, req.body, req.signature)
                    for x in [*secrets, server_secret]
                )
                return {"status": 200 if ok else 403, "error": "bad signature", "targets": []}
            key = f"{req.app_id}/{req.enterprise_id}/{req.team_id}"
            found = self._connections(db, "slack", "install_ids", key)
            targets = [
                c
                for c, plain in found
                if slack.verify(
                    plain.get("private_signing_secret") or server_secret,
                    req.timestamp,
                    req.body,
                    req.signature,
                )
            ]
            if found and not targets:
                return {"status": 403, "error": "bad signature", "targets": []}
            signed = b"v0:" + req.timestamp.encode() + b":" + req.body
            digest = hashlib.sha256(signed).hexdigest()
            claims = [self._claim(db, c, "slack", req.delivery, digest) for c in targets]
            return {"status": 200, "targets": claims}

    def _connections(
        self, db: DB, integration: str, var: str, value: str | None = None
    ) -> list[tuple[Connection, dict[str, str]]]:
        """Connections of ``integration`` of projects with an active deployment that have
        the routing variable ``var`` (equal to ``value`` when given), with their vars in
        plaintext."""
        out = []
        for conn in routes.candidates(db, integration, var, value):
            active = db.exec(
                select(Deployment).where(
                    Deployment.project_id == conn.project_id, Deployment.state == "ACTIVE"
                )
            ).first()
            if active is None:
                continue
            rows = db.exec(select(Var).where(Var.scope_id == conn.connection_id))
            out.append((conn, {r.name: self.sealer.open(r.value) for r in rows}))
        return out

    def _claim(
        self, db: DB, conn: Connection, integration: str, delivery: str, digest: str
    ) -> dict[str, Any]:
        """The event a delivery becomes for ``conn``: a new id the first time, the same one
        when the provider delivers it again (``new`` False: the ingress publishes it again
        only if the store never got it).

        A delivery is known by its id (``delivery``: GitHub's ``X-GitHub-Delivery``,
        Slack's event id) and by ``digest``, a hash of what its signature covers: the id is
        not signed, so a signed request sent again under a new id (a replay) is the same
        delivery too. Both are kept as long as the event (``cleanup``)."""
        target = {"connection_id": conn.connection_id, "project_id": conn.project_id}
        keys = [f"{integration}:{delivery}:{conn.connection_id}"] if delivery else []
        keys.append(f"{integration}-signed:{digest}:{conn.connection_id}")
        if (kept := self._delivered(db, keys)) is None:
            event_id, now = ids.new_id("evt"), timefmt.now_us()
            try:
                db.add_all([Delivery(key=k, event_id=event_id, created_us=now) for k in keys])
                db.commit()
                return {**target, "event_id": event_id, "new": True}
            except IntegrityError:  # the same delivery, claimed at the same moment
                db.rollback()
            kept = self._delivered(db, keys)
            assert kept is not None
        stored = db.exec(select(EventRow).where(EventRow.event_id == kept.event_id)).first()
        return {**target, "event_id": kept.event_id, "new": False, "stored": stored is not None}

    @staticmethod
    def _delivered(db: DB, keys: list[str]) -> Delivery | None:
        for key in keys:
            if (row := db.get(Delivery, key)) is not None:
                return row
        return None

    def webhook_lookup(self, req: rq.WebhookLookup) -> dict[str, Any]:
        """The trigger behind a slug, if its project has an active deployment."""
        with DB(self.engine) as db:
            t = db.exec(select(Trigger).where(Trigger.webhook_slug == req.slug)).first()
            if t is None:
                raise NotFound("no webhook with this path")
            active = db.exec(
                select(Deployment).where(
                    Deployment.project_id == t.project_id, Deployment.state == "ACTIVE"
                )
            ).first()
            if active is None:
                raise NotFound("the webhook's project has no active deployment")
            return {
                "trigger_id": t.trigger_id,
                "project_id": t.project_id,
                "name": t.name,
                "is_sync": t.is_sync,
            }

    def dispatch_targets(self, req: rq.DispatchTargets) -> dict[str, Any]:
        """What an event on ``trigger_id`` reaches: the trigger (or, for an event on a
        connection, the connection's triggers), the sessions subscribed to it, and the
        project's active deployments."""
        with DB(self.engine) as db:
            triggers: list[Trigger] = []
            project_id = ""
            if ids.id_prefix(req.trigger_id) == "con":
                conn = db.get(Connection, req.trigger_id)
                if conn is not None:
                    project_id = conn.project_id
                    triggers = list(
                        db.exec(
                            select(Trigger).where(
                                Trigger.project_id == conn.project_id,
                                Trigger.source_type == "connection",
                                Trigger.connection == conn.name,
                            )
                        )
                    )
            elif (t := db.get(Trigger, req.trigger_id)) is not None:
                project_id, triggers = t.project_id, [t]
            if not project_id:
                return {"triggers": [], "deployments": [], "subscriptions": []}
            deps = db.exec(
                select(Deployment).where(
                    Deployment.project_id == project_id, Deployment.state == "ACTIVE"
                )
            )
            subs, more = self._subscriptions(db, req.trigger_id, req.after)
            return {
                "subscriptions": subs,
                "more": more,
                "triggers": [t.model_dump() for t in triggers],
                "deployments": [
                    {"deployment_id": d.deployment_id, "build_id": d.build_id} for d in deps
                ],
            }

    @staticmethod
    def _subscriptions(db: DB, trigger_id: str, after: str) -> tuple[list[dict[str, str]], str]:
        """One page of the subscriptions to ``trigger_id`` (in id order, after ``after``),
        and the id to ask after for the next ("" when this is the last): thousands of
        subscriptions with long filters would not fit one NATS message."""
        rows = db.exec(
            select(Subscription)
            .where(Subscription.trigger_id == trigger_id, Subscription.subscription_id > after)
            .order_by(col(Subscription.subscription_id))
            .limit(SUBSCRIPTIONS_PAGE + 1)
        ).all()
        page: list[dict[str, str]] = []
        size = 0
        for x in rows[:SUBSCRIPTIONS_PAGE]:
            size += len(x.filter.encode()) + 128  # (ids and encoding)
            if page and size > SUBSCRIPTIONS_PAGE_BYTES:
                return page, page[-1]["subscription_id"]
            page.append(
                {
                    "subscription_id": x.subscription_id,
                    "session_id": x.session_id,
                    "filter": x.filter,
                }
            )
        more = page[-1]["subscription_id"] if len(rows) > SUBSCRIPTIONS_PAGE else ""
        return page, more

    def dispatch_note(self, req: rq.DispatchNote) -> None:
        """Keeps the dispatcher's notes on an event (``notes``: source and note each); a
        note already kept for the same source stays. The event's own row may come later."""
        now = timefmt.now_us()
        rows = [
            {
                "event_id": req.event_id,
                "source": str(n["source"]),
                "note": str(n["note"]),
                "created_us": now,
            }
            for n in req.notes
        ]
        with self.engine.begin() as conn:
            insert_new(conn, DispatchNote.__table__, rows)  # type: ignore[attr-defined]

    def subscription_create(self, req: rq.SubscriptionCreate) -> None:
        """Keeps a session's subscription; one with its id kept already (an earlier try of
        the same call, answered late) stays as it is."""
        with DB(self.engine) as db:
            if db.get(Subscription, req.subscription_id) is not None:
                return
            # (Locked until this commits: a session's end applied at the same moment waits,
            # then removes this subscription with its others; or it came first, and this
            # sees it.)
            session = db.exec(
                select(Session)
                .where(Session.session_id == req.session_id)
                .with_for_update(read=True)
            ).first()
            if session is not None and session.state in wire.FINAL_STATES:
                return  # an earlier try of the call, carried out after the session ended
            mine = db.exec(
                select(func.count()).where(Subscription.session_id == req.session_id)
            ).one()
            if mine >= MAX_SESSION_SUBSCRIPTIONS:
                raise InvalidArgument(
                    f"this session already has {mine} subscriptions, the limit: unsubscribe "
                    "from some before subscribing again"
                )
            theirs = db.exec(
                select(func.count()).where(Subscription.trigger_id == req.trigger_id)
            ).one()
            if theirs >= MAX_SOURCE_SUBSCRIPTIONS:
                raise InvalidArgument(
                    f"this source already has {theirs} subscriptions of live sessions, the "
                    "limit: let some of those sessions end or unsubscribe first"
                )
            db.add(
                Subscription(
                    subscription_id=req.subscription_id,
                    session_id=req.session_id,
                    project_id=req.project_id,
                    trigger_id=req.trigger_id,
                    filter=req.filter,
                    created_us=timefmt.now_us(),
                )
            )
            try:
                db.commit()
            except IntegrityError:  # (the other try, kept by another store at that moment)
                db.rollback()

    def subscription_delete(self, req: rq.SubscriptionDelete) -> None:
        """Deletes every subscription of ``session_id``, or only ``subscription_id`` of it (a
        session removes only its own)."""
        with DB(self.engine) as db:
            q = select(Subscription).where(Subscription.session_id == req.session_id)
            if req.subscription_id:
                q = q.where(Subscription.subscription_id == req.subscription_id)
            for x in db.exec(q):
                db.delete(x)
            db.commit()

    def project_active(self, req: rq.ProjectRef) -> dict[str, Any]:
        """A project's id and its active deployment (for starting sessions in it)."""
        with DB(self.engine) as db:
            p = self._project(db, req.project)
            d = db.exec(
                select(Deployment).where(
                    Deployment.project_id == p.project_id, Deployment.state == "ACTIVE"
                )
            ).first()
            if d is None:
                raise NotFound(f'project "{p.name}" has no active deployment')
            return {
                "project_id": p.project_id,
                "deployment_id": d.deployment_id,
                "build_id": d.build_id,
            }

    def schedule_list(self, req: rq.Empty) -> list[dict[str, Any]]:
        """Schedule triggers of projects that have an active deployment."""
        with DB(self.engine) as db:
            active = {
                d.project_id
                for d in db.exec(select(Deployment).where(Deployment.state == "ACTIVE"))
            }
            rows = db.exec(select(Trigger).where(Trigger.schedule != ""))
            return [t.model_dump() for t in rows if t.project_id in active]

    def session_env(self, req: rq.SessionEnv) -> dict[str, str]:
        """A session's environment, in AutoKitteh's order (a later name wins): the project's
        vars, each connection's ``<connection>__<var>``, each webhook trigger's
        ``<trigger>__webhook_url``, and ``store_public_url``."""
        with DB(self.engine) as db:
            pid = req.project_id
            rows = db.exec(select(Var).where(Var.scope_id == pid))
            env = {v.name: self.sealer.open(v.value) for v in rows}
            for c in db.exec(select(Connection).where(Connection.project_id == pid)):
                rows = db.exec(select(Var).where(Var.scope_id == c.connection_id))
                plain = {v.name: self.sealer.open(v.value) for v in rows}
                env.update(connection_env(c.name, c.connection_id, plain))
            env.update(
                (t.name + "__webhook_url", webhook_url(t.webhook_slug))
                for t in db.exec(select(Trigger).where(Trigger.project_id == pid))
                if t.webhook_slug
            )
            env["store_public_url"] = store_public_url(pid)
            return env

    # --- vars and environments (each project has one environment, "default")

    def _env_project(self, db: DB, req: rq.VarScope) -> Project:
        """The project named by ``project``, or by ``env`` (an env id or ``PROJECT/default``)."""
        env = str(req.env or "")
        if not env:
            return self._project(db, req.project)
        if ids.is_id(env, "env"):
            for p in db.exec(select(Project)):
                if env_id(p) == env:
                    return p
            raise NotFound(f'environment "{env}" not found')
        name, _, env_name = env.partition("/")
        if env_name != "default":
            raise NotFound(f'environment "{env}" not found: each project has only "default"')
        return self._project(db, name)

    def _var_scope(self, db: DB, req: rq.VarScope) -> tuple[str, str]:
        """Whose vars: a connection (``connection``: ``con_`` id or ``PROJECT/NAME``) or a
        project (see ``_env_project``). Returns the scope id and how to name it in errors."""
        ref = str(req.connection or "")
        if not ref:
            p = self._env_project(db, req)
            return p.project_id, f'project "{p.name}"'
        if ids.is_id(ref, "con"):
            conn = db.get(Connection, ref)
        else:
            project, _, name = ref.rpartition("/")
            if not project:
                raise InvalidArgument(f"connection {ref!r}: use PROJECT/CONNECTION or a con_ id")
            pid = self._project(db, project).project_id
            conn = db.exec(
                select(Connection).where(Connection.project_id == pid, Connection.name == name)
            ).first()
        if conn is None:
            raise NotFound(f'connection "{ref}" not found')
        return conn.connection_id, f'connection "{ref}"'

    def env_list(self, req: rq.ProjectFilter) -> list[dict[str, Any]]:
        with DB(self.engine) as db:
            q = within(select(Project).order_by(Project.name), Project, req.within)
            if req.project:
                q = q.where(Project.project_id == self._project(db, req.project).project_id)
            return [
                {
                    "env_id": env_id(p),
                    "name": "default",
                    "project_id": p.project_id,
                    "project": p.name,
                }
                for p in db.exec(q)
            ]

    def var_set(self, req: rq.VarSet) -> None:
        with DB(self.engine) as db:
            scope, _ = self._var_scope(db, req)
            self._put_var(db, scope, str(req.name), req.value, bool(req.secret), req.description)
            routes.write(db, commit=True)

    def connection_init(self, req: rq.ConnectionInit) -> None:
        """Sets a connection's vars (``values`` in plaintext, ``secrets`` encrypted) and
        deletes those named in ``delete``, all at once: when one is refused, nothing
        changes."""
        both = set(req.values) & set(req.secrets)
        if both:
            raise InvalidArgument(f"var {sorted(both)[0]!r} is given both as a secret and not")
        with DB(self.engine) as db:
            scope, _ = self._var_scope(db, rq.VarScope(connection=req.connection))
            conn = db.get(Connection, scope)
            project_id = conn.project_id if conn is not None else scope
            before = vars_size(db, project_id)
            for name in set(req.delete) - set(req.values) - set(req.secrets):
                found = select(Var).where(Var.scope_id == scope, Var.name == name)
                for row in db.exec(found):
                    db.delete(row)
            for secret, given in ((False, req.values), (True, req.secrets)):
                for name, value in given.items():
                    self._put_var(db, scope, name, value, secret, None, room=False)
            check_room(db, project_id, before)  # (once, on what they leave)
            routes.write(db, commit=True)

    def _put_var(
        self,
        db: DB,
        scope: str,
        name: str,
        value: object,
        secret: bool,
        description: object,
        room: bool = True,
    ) -> None:
        """Adds (or changes) a var in ``db``, not committed; refused before any change when
        the name, the value or a routing claim is not good."""
        problem = name_problem(name)
        if problem:
            raise InvalidArgument(f"invalid var name {shown(name)}: {problem}")
        if not isinstance(value, str):
            raise InvalidArgument("the var value must be text")
        if len(value.encode()) > MAX_VAR:
            raise InvalidArgument(f"the value is over the {MAX_VAR} byte limit")
        text = None if description is None else str(description)
        put_var(db, self.sealer, scope, name, value, secret, text, room)

    def var_get(self, req: rq.VarGet) -> list[dict[str, Any]]:
        """Vars of a project; secret values stay masked unless ``reveal``."""
        names = list(req.names or [])
        with DB(self.engine) as db:
            scope, label = self._var_scope(db, req)
            rows = {v.name: v for v in db.exec(select(Var).where(Var.scope_id == scope))}
            missing = [n for n in names if n not in rows]
            if missing:
                raise NotFound(f'var "{missing[0]}" not found in {label}')
            out = []
            for n in names or sorted(rows):
                v = rows[n]
                shown = self.sealer.open(v.value) if not v.is_secret or req.reveal else None
                out.append(
                    {
                        "name": v.name,
                        "value": shown,
                        "secret": v.is_secret,
                        "description": v.description,
                    }
                )
            return out

    def var_delete(self, req: rq.VarDelete) -> None:
        with DB(self.engine) as db:
            scope, label = self._var_scope(db, req)
            var = db.exec(
                select(Var).where(Var.scope_id == scope, Var.name == str(req.name))
            ).first()
            if var is None:
                raise NotFound(f'var "{req.name}" not found in {label}')
            db.delete(var)
            db.commit()

    def session_list(self, req: rq.SessionList) -> dict[str, Any]:
        """A page of sessions, newest first, without their inputs (as AutoKitteh lists them).
        ``next_page_token`` (empty on the last page) continues after the page's last session."""
        size = int(req.page_size or DEFAULT_PAGE)
        skip = int(req.skip or 0)
        if not 1 <= size <= MAX_PAGE:
            raise InvalidArgument(f"page size must be between 1 and {MAX_PAGE}, not {size}")
        if skip < 0:
            raise InvalidArgument(f"rows to skip must be 0 or more, not {skip}")
        with DB(self.engine) as db:
            q = within(select(Session), Session, req.within).order_by(
                col(Session.created_us).desc(), col(Session.session_id).desc()
            )
            if req.project:
                q = q.where(Session.project_id == self._project(db, req.project).project_id)
            if req.deployment:
                q = q.where(Session.deployment_id == req.deployment)
            if req.event_id:
                q = q.where(Session.event_id == req.event_id)
            if req.event_ids:
                if len(req.event_ids) > MAX_PAGE:
                    raise InvalidArgument(f"at most {MAX_PAGE} event ids, not {len(req.event_ids)}")
                q = q.where(col(Session.event_id).in_(req.event_ids))
            if req.trigger:
                q = q.where(Session.trigger_id == self._trigger_id(db, req.project, req.trigger))
            if req.parent:
                q = q.where(Session.parent_session_id == req.parent)
            if req.created_after:
                after = _time_us(req.created_after, "created_after")
                q = q.where(col(Session.created_us) >= after)
            if req.created_before:
                before = _time_us(req.created_before, "created_before")
                q = q.where(col(Session.created_us) < before)
            if req.state:
                state = str(req.state).upper()
                if state not in SESSION_STATES:
                    raise InvalidArgument(
                        f"invalid state {req.state!r}: use one of {', '.join(SESSION_STATES)}"
                    )
                q = q.where(Session.state == state)
            if req.page_token:
                created, sid = _page_after(str(req.page_token))
                q = q.where(
                    (col(Session.created_us) < created)
                    | ((col(Session.created_us) == created) & (col(Session.session_id) < sid))
                )
            # Read as the page fills, and ended once it has read LIST_READ_BYTES of inputs
            # (opened to show the memo sealed with them): a page read its 1,000 sessions
            # first, and 60 sessions with 4 MiB inputs took the store 2 s a page.
            found = db.exec(
                q.offset(skip).limit(size + 1).execution_options(yield_per=LIST_READ_ROWS)
            )
            rows: list[Session] = []
            read = 0
            more = False
            for s in found:
                if len(rows) == size or read > LIST_READ_BYTES:
                    more = True
                    break
                rows.append(s)
                read += _inputs_size(s.inputs)
            found.close()
            names = self._names(db)
        views = [self._session_view(s, names) for s in rows]
        for v in views:
            del v["inputs"]
        fit = _within_bytes(views)
        if fit < len(views):
            more, rows, views = True, rows[:fit], views[:fit]
        last = rows[-1] if more else None
        return {
            "sessions": views,
            "next_page_token": f"{last.created_us}.{last.session_id}" if last else "",
        }

    def session_get(self, req: rq.SessionRef) -> dict[str, Any]:
        with DB(self.engine) as db:
            sid = self._session_id(db, req.session)
            s = db.get(Session, sid)
            if s is None:
                raise NotFound(f'session "{sid}" not found')
            return self._session_view(s, self._names(db))

    def session_states(self, req: rq.SessionStates) -> dict[str, str]:
        """The states of those of ``session_ids`` the store knows (at most 1,000)."""
        wanted = req.session_ids or []
        if not isinstance(wanted, list) or len(wanted) > 1000:
            raise InvalidArgument("session_ids must be a list of at most 1,000 session ids")
        with DB(self.engine) as db:
            rows = db.exec(
                select(Session.session_id, Session.state).where(
                    col(Session.session_id).in_([str(x) for x in wanted])
                )
            )
            return {sid: state for sid, state in rows}

    def session_records(self, req: rq.SessionRecords) -> dict[str, Any]:
        """Materialized journal records of a session in order, from ``skip`` on; ``kinds``
        narrows them. A page holds at most ``limit`` (and 1,000) records and about 1 MiB of
        their data; ``more`` says whether records follow it."""
        limit = min(int(req.limit or RECORDS_PAGE), RECORDS_PAGE)
        skip = int(req.skip or 0)
        if limit < 1 or skip < 0:
            raise InvalidArgument("limit must be 1 or more and skip 0 or more")
        with DB(self.engine) as db:
            sid = self._session_id(db, req.session)
            session = db.get(Session, sid)
            if session is None:
                raise NotFound(f'session "{sid}" not found')
            q = select(SessionRecord).where(SessionRecord.session_id == sid)
            if req.kinds:
                q = q.where(col(SessionRecord.kind).in_(req.kinds))
            q = q.order_by(col(SessionRecord.seq)).offset(skip).limit(limit + 1)
            # Read as the page fills, a few rows at a time: all of them were read first
            # (190 prints of 256 KiB, 50 MiB, for a page of 1 MiB), and a token limited to
            # one project held every project's sessions up with a loop of `ak session log`.
            rows = db.exec(q.execution_options(yield_per=RECORDS_READ))
            records: list[dict[str, Any]] = []
            size = 0
            more = False
            for r in rows:
                if len(records) == limit or (records and size > RECORDS_BYTES):
                    more = True
                    break
                data = open_record(sid, r.seq, r.data, self.keys)
                if r.kind == wire.CREATED and "memo" not in data:  # (sealed with the inputs)
                    with contextlib.suppress(SealError):  # (an error that does not open: none)
                        data["memo"] = self._session_view(session, {})["memo"]
                records.append({"seq": r.seq, "kind": r.kind, "t_us": r.t_us, "data": data})
                size += len(repr(data))
            rows.close()
        return {"session_id": sid, "records": records, "more": more}

    def session_trace(self, req: rq.SessionRef) -> dict[str, Any]:
        """The spans of the trace(s) a session belongs to, oldest first."""
        with DB(self.engine) as db:
            sid = self._session_id(db, req.session)
            if db.get(Session, sid) is None:
                raise NotFound(f'session "{sid}" not found')
            traces = set(db.exec(select(SpanRow.trace_id).where(SpanRow.session_id == sid)).all())
            rows = list(
                db.exec(
                    select(SpanRow)
                    .where(col(SpanRow.trace_id).in_(traces))
                    .order_by(col(SpanRow.start_us), col(SpanRow.id))
                    .limit(MAX_SPANS + 1)
                )
            )
            more = 0
            if len(rows) > MAX_SPANS:  # a session of many thousand steps: the first ones
                rows = rows[:MAX_SPANS]
                total = db.exec(
                    select(func.count())
                    .select_from(SpanRow)
                    .where(col(SpanRow.trace_id).in_(traces))
                ).one()
                more = total - MAX_SPANS
            return {
                "session_id": sid,
                "spans": [r.model_dump(exclude={"id"}) for r in rows],
                "more": more,
            }

    def keys_check(self, req: rq.KeysCheck) -> dict[str, Any]:
        """Whether the caller's value opens here, and one sealed here for it to open
        (``akcore.keycheck``)."""
        return {
            "opened": keycheck.opens(self.keys, req.sealed),
            "sealed": keycheck.sealed(self.keys),
        }

    def event_list(self, req: rq.EventList) -> list[dict[str, Any]]:
        """The newest 1,000 events (of a project, of one of its triggers), newest first; fewer
        when they take more than about LIST_BYTES."""
        with DB(self.engine) as db:
            # Not the events' data (up to 8 MiB each): 1,000 events of 1 MiB took 1.3 s of
            # the store a list, and a token limited to one project held every project's
            # sessions up with a loop of them.
            q = within(sa_select(*_EVENT_VIEW), EventRow, req.within)
            q = q.order_by(col(EventRow.seq).desc())
            if req.project:
                q = q.where(EventRow.project_id == self._project(db, req.project).project_id)
            if req.trigger:
                q = self._offered_to(db, q, self._trigger_id(db, req.project, req.trigger))
            rows = db.execute(q.limit(1000))
            views = [_event_view(EventRow(**row._mapping), self.keys) for row in rows]
        return views[: _within_bytes(views)]

    def event_get(self, req: rq.EventGet) -> dict[str, Any]:
        """An event; its data opened and its credential headers masked, unless ``reveal``
        (shown); ``sealed``: its data as it rests instead (``sealed_data``, for a copy of
        the event to be dispatched again or a session restarted)."""
        with DB(self.engine) as db:
            e = db.exec(select(EventRow).where(EventRow.event_id == req.event_id)).first()
            if e is None:
                raise NotFound(f'event "{req.event_id}" not found')
            notes = db.exec(
                select(DispatchNote)
                .where(DispatchNote.event_id == e.event_id)
                .order_by(col(DispatchNote.id))
            )
            view = _event_view(e, self.keys)
            if req.sealed:
                view["sealed_data"] = _sealed_data(e, self.keys)
            elif req.reveal:
                data = _event_data(e, self.keys)
                view["data"] = credheaders.unseal(data, e.project_id, self.keys)
            else:
                view["data"] = credheaders.mask(_event_data(e, self.keys))
            return {**view, "notes": _notes_shown(list(notes))}
