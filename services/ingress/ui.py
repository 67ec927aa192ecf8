"""The web UI under ``/ui``: server-rendered pages of projects, sessions, one session (its
prints, journal, event, error) and its trace, behind the API's authentication
(``uiauth``). Every read is an API operation run for the caller (``commands.perform``);
``static/ui.js`` polls the fragments that change while a page is open (docs/ui.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from akcore.datakey import Keyring
from akcore.errors import AKError, InvalidArgument, Unauthenticated
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from nats.aio.client import Client

from . import uiviews
from .auth import Authenticator, Caller
from .clients import ClientAddresses
from .commands import perform
from .uiauth import UiAuth, after_login, check_form, csrf_token, read_form, set_cookies

HERE = Path(__file__).parent
STATIC = {  # the only files /ui/static serves
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
}
RECORDS_SHOWN = 500  # journal records on one page of a session
SESSIONS_SHOWN = 50  # sessions on a page of the list (?size= up to 1000)
EVENTS_SHOWN = 200  # the newest events on the events page
CHILDREN_SHOWN = 100  # the newest child sessions on a session's page
EVENT_PAGES = 10  # pages of sessions (each 1,000 or 4 MiB) the events page shows at most
# The sessions page's filters: ``within`` ("1h", ...) is a shorthand for ``created_after``.
SESSION_FILTERS = (
    "project", "state", "deployment", "event_id", "trigger", "parent", "within",
    "created_after", "created_before",
)  # fmt: skip
MAX_VAR_FORM = 2 * 1024 * 1024 + 4096  # a var's value, at most 1 MiB, url-encoded
STORE_WAIT = 10.0  # seconds a page waits for the store before it says the store is away
HEADERS = {
    # No inline script or style, nothing from elsewhere, never inside another site's frame.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # everything a handler or a user wrote is text, never markup
    undefined=jinja2.StrictUndefined,
)
_templates.filters["utc"] = uiviews.utc_text
_templates.filters["iso"] = uiviews.iso
_templates.globals["duration"] = uiviews.duration

Page = Callable[[Request, Caller], Awaitable[Response]]


def add_ui(
    app: FastAPI,
    nc: Client,
    auth: Authenticator,
    keys: Keyring,
    clients: ClientAddresses | None = None,
) -> None:
    """Adds ``/`` (a redirect), ``/ui`` and its pages to ``app`` (``keys`` open the events'
    data that the pages dispatch again)."""
    gate = UiAuth(auth, clients)

    def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        csrf = csrf_token(request)
        ctx.update(csrf=csrf, tokens=gate.tokens_required, path=request.url.path)
        html = _templates.get_template(name).render(**ctx)
        resp = HTMLResponse(html, status_code=status, headers=HEADERS)
        set_cookies(request, resp, csrf)
        return resp

    def failed(request: Request, e: AKError) -> HTMLResponse:
        return render(request, "error.html", e.http_status, error=e)

    def page(handler: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                caller = await gate.caller(request)
            except Unauthenticated as e:
                if gate.tokens_required and not request.headers.get("x-ak-fragment"):
                    query = f"?{request.url.query}" if request.url.query else ""
                    where = quote(request.url.path + query)
                    return RedirectResponse(f"/ui/login?next={where}", status_code=303)
                return failed(request, e)
            except AKError as e:
                return failed(request, e)
            try:
                return await handler(request, caller)
            except AKError as e:
                return failed(request, e)

        return endpoint

    async def call(caller: Caller, op: str, **args: Any) -> Any:
        return await perform(nc, op, args, caller, keys, timeout=STORE_WAIT)

    async def of_projects(caller: Caller, op: str, project: str) -> list[dict[str, Any]]:
        """``op``'s list of one project, or of every project the caller sees, asked project
        by project: one answer of all would be over the NATS message limit once a few
        projects hold their most (500 triggers, 500 connections each)."""
        if project:
            return list(await call(caller, op, project=project))
        listed = []
        for p in await call(caller, "project.list"):
            listed += await call(caller, op, project=p["project_id"])
        return listed

    async def sessions_of(caller: Caller, project: str, events: list[str]) -> dict[str, Any]:
        """The sessions the events started (each page ends at 4 MiB: failed sessions with
        long errors fill one with ~60), and whether some were left out (over EVENT_PAGES)."""
        found: list[dict[str, Any]] = []
        token = ""
        for _ in range(EVENT_PAGES):
            page = await call(
                caller, "session.list", project=project, event_ids=events, page_size=1000,
                page_token=token,
            )  # fmt: skip
            found += page["sessions"]
            if not (token := page["next_page_token"]):
                break
        return {"sessions": found, "more": bool(token)}

    async def root(request: Request) -> Response:
        return RedirectResponse("/ui/sessions", status_code=307)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return Response("Not Found\n", status_code=404)
        body = (HERE / "static" / name).read_bytes()
        return Response(body, media_type=STATIC[name], headers=HEADERS)

    async def login_form(request: Request) -> Response:
        if not gate.tokens_required:
            return RedirectResponse("/ui/sessions", status_code=303)
        return render(request, "login.html", next=after_login(request.query_params.get("next")))

    async def login(request: Request) -> Response:
        target, token = "/ui/sessions", ""
        try:
            fields = await read_form(request)
            target, token = after_login(fields.get("next")), fields.get("token", "").strip()
            check_form(request, fields)
            if not token:
                raise Unauthenticated("type an API token")
            await gate.check_token(request, token)
        except AKError as e:
            return render(request, "login.html", e.http_status, next=target, error=e.message)
        resp = RedirectResponse(target, status_code=303)
        set_cookies(request, resp, csrf_token(request), token=token)
        return resp

    async def logout(request: Request) -> Response:
        try:
            check_form(request, await read_form(request))
        except AKError as e:
            return failed(request, e)
        resp = RedirectResponse("/ui/login", status_code=303)
        set_cookies(request, resp, csrf_token(request), token="")
        return resp

    async def projects(request: Request, caller: Caller) -> Response:
        shown = []
        for p in await call(caller, "project.list"):
            ref = p["project_id"]
            deployments = await call(caller, "deployment.list", project=ref)
            triggers = await call(caller, "trigger.list", project=ref)
            for t in triggers:
                slug = t.get("webhook_slug")
                t["url"] = f"{request.base_url}webhooks/{slug}" if slug else ""
                t["next_run"] = uiviews.next_run(t.get("schedule") or "")
            shown.append(
                {
                    **p,
                    "active": [d for d in deployments if d["state"] == "ACTIVE"],
                    "triggers": triggers,
                    "vars": await call(caller, "var.get", project=ref),
                }
            )
        return render(request, "projects.html", projects=shown)

    async def var_action(request: Request, caller: Caller) -> Response:
        """Sets (``set``) or deletes (``delete``) a var of a project, as `ak var` does."""
        project, action = request.path_params["project"], request.path_params["action"]
        fields = await read_form(request, MAX_VAR_FORM)
        check_form(request, fields)
        name = fields.get("name", "")
        if action == "set":
            secret = fields.get("secret") == "on"
            await call(
                caller, "var.set", project=project, name=name, value=fields.get("value", ""),
                secret=secret,
            )  # fmt: skip
        elif action == "delete":
            await call(caller, "var.delete", project=project, name=name)
        else:
            raise InvalidArgument(f"unknown action {action!r}: use set or delete")
        return RedirectResponse(f"/ui/projects#{quote(project)}", status_code=303)

    async def session_rows(request: Request, caller: Caller) -> dict[str, Any]:
        q = request.query_params
        filters = {k: q.get(k, "") for k in SESSION_FILTERS}
        size = uiviews.count(q.get("size", "0")) or SESSIONS_SHOWN
        asked = {k: v for k, v in filters.items() if k != "within"}
        if filters["within"] and not asked["created_after"]:
            asked["created_after"] = uiviews.since(filters["within"])
        page = await call(
            caller, "session.list", **asked, page_token=q.get("page", ""), page_size=size
        )
        token = page["next_page_token"]
        return {
            "sessions": page["sessions"],
            "next": uiviews.query_with(q, page=token) if token else "",
            "filters": filters,
            "live": not q.get("page"),
            "rows_url": "/ui/sessions/rows" + uiviews.query_with(q),
        }

    async def sessions(request: Request, caller: Caller) -> Response:
        listed = await session_rows(request, caller)
        names = [p["name"] for p in await call(caller, "project.list")]
        triggers = await of_projects(caller, "trigger.list", listed["filters"]["project"])
        return render(
            request, "sessions.html", projects=names, states=uiviews.STATES,
            triggers=triggers, withins=uiviews.WITHIN, **listed,
        )  # fmt: skip

    async def sessions_fragment(request: Request, caller: Caller) -> Response:
        return render(request, "session_rows.html", **await session_rows(request, caller))

    async def session(request: Request, caller: Caller) -> Response:
        sid = request.path_params["sid"]
        s = await call(caller, "session.get", session=sid)
        skip = uiviews.count(request.query_params.get("skip", "0"))
        page = await call(caller, "session.records", session=sid, skip=skip, limit=RECORDS_SHOWN)
        event = None
        if s.get("event_id"):
            event = await call(caller, "event.get", event_id=s["event_id"])
        rows = [uiviews.journal_row(r) for r in page["records"]]
        return render(
            request,
            "session.html",
            s=s,
            final=s["state"] in uiviews.FINAL_STATES,
            children=await children(caller, s["session_id"]),
            event=event,
            event_shown=uiviews.event_view(event) if event else None,
            inputs=uiviews.pretty(s.get("inputs") or {}),
            rows=rows,
            skip=skip,
            next_skip=skip + len(rows) if page["more"] else 0,
            prev_skip=max(skip - RECORDS_SHOWN, 0) if skip else -1,
            live=not page["more"],
        )

    async def children(caller: Caller, sid: str) -> dict[str, Any]:
        """The sessions ``sid`` started (the newest CHILDREN_SHOWN of them)."""
        kids: dict[str, Any] = await call(
            caller, "session.list", parent=sid, page_size=CHILDREN_SHOWN
        )
        return kids

    async def session_state(request: Request, caller: Caller) -> Response:
        s = await call(caller, "session.get", session=request.path_params["sid"])
        final = s["state"] in uiviews.FINAL_STATES
        kids = await children(caller, s["session_id"])
        resp = render(request, "session_state.html", s=s, final=final, children=kids)
        if final:
            resp.headers["X-AK-Final"] = "1"
        return resp

    async def session_records(request: Request, caller: Caller) -> Response:
        """Journal rows from ``skip`` on, for a page that shows them as they come."""
        sid, skip = request.path_params["sid"], uiviews.count(request.query_params.get("skip", "0"))
        s = await call(caller, "session.get", session=sid)
        page = await call(caller, "session.records", session=sid, skip=skip, limit=200)
        rows = [uiviews.journal_row(r) for r in page["records"]]
        resp = render(request, "journal_rows.html", rows=rows)
        resp.headers["X-AK-Skip"] = str(skip + len(rows))
        if s["state"] in uiviews.FINAL_STATES and not page["more"]:
            resp.headers["X-AK-Final"] = "1"  # (the state is read first: nothing is missed)
        return resp

    async def session_action(request: Request, caller: Caller) -> Response:
        sid, action = request.path_params["sid"], request.path_params["action"]
        fields = await read_form(request)
        check_form(request, fields)
        if action == "stop":
            await call(caller, "session.stop", session=sid, reason="stopped from the web UI")
            return RedirectResponse(f"/ui/sessions/{quote(sid)}", status_code=303)
        if action == "restart":
            new = await call(caller, "session.restart", session=sid)
            return RedirectResponse(f"/ui/sessions/{quote(new['session_id'])}", status_code=303)
        raise InvalidArgument(f"unknown action {action!r}: use stop or restart")

    async def events(request: Request, caller: Caller) -> Response:
        project = request.query_params.get("project", "")
        trigger = request.query_params.get("trigger", "")
        listed = await call(caller, "event.list", project=project, trigger=trigger)
        listed = listed[:EVENTS_SHOWN]
        triggers = {t["trigger_id"]: t for t in await of_projects(caller, "trigger.list", project)}
        connections = {
            c["connection_id"]: c for c in await of_projects(caller, "connection.list", project)
        }
        ids = [e["event_id"] for e in listed]
        started = await sessions_of(caller, project, ids) if ids else {"sessions": []}
        by_event: dict[str, list[dict[str, Any]]] = {}
        for ses in started["sessions"]:
            by_event.setdefault(ses.get("event_id") or "", []).append(ses)
        names = [p["name"] for p in await call(caller, "project.list")]
        return render(
            request, "events.html", events=listed, triggers=triggers, sessions=by_event,
            project=project, projects=names, trigger=trigger, connections=connections,
            sessions_cut=started.get("more", False),
        )  # fmt: skip

    async def event(request: Request, caller: Caller) -> Response:
        eid = request.path_params["eid"]
        ev = await call(caller, "event.get", event_id=eid)  # credential headers masked
        started = await call(caller, "session.list", event_id=eid, page_size=100)
        return render(
            request, "event.html", event=ev, shown=uiviews.event_view(ev),
            sessions=started["sessions"],
        )  # fmt: skip

    async def redispatch(request: Request, caller: Caller) -> Response:
        check_form(request, await read_form(request))
        copy = await call(caller, "event.redispatch", event_id=request.path_params["eid"])
        return RedirectResponse(f"/ui/events/{quote(copy['event_id'])}", status_code=303)

    async def trace(request: Request, caller: Caller) -> Response:
        res = await call(caller, "session.trace", session=request.path_params["sid"])
        rows = uiviews.waterfall(res["spans"])
        services = sorted({r.service for r in rows})
        sid = res["session_id"]
        return render(
            request, "trace.html", sid=sid, rows=rows, more=res["more"], services=services
        )

    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui", root, methods=["GET"])
    app.add_api_route("/ui/", root, methods=["GET"])
    app.add_api_route("/ui/static/{name}", static, methods=["GET"])
    app.add_api_route("/ui/login", login_form, methods=["GET"])
    app.add_api_route("/ui/login", login, methods=["POST"])
    app.add_api_route("/ui/logout", logout, methods=["POST"])
    app.add_api_route("/ui/projects", page(projects), methods=["GET"])
    app.add_api_route("/ui/projects/{project}/vars/{action}", page(var_action), methods=["POST"])
    app.add_api_route("/ui/sessions", page(sessions), methods=["GET"])
    app.add_api_route("/ui/sessions/rows", page(sessions_fragment), methods=["GET"])
    app.add_api_route("/ui/sessions/{sid}", page(session), methods=["GET"])
    app.add_api_route("/ui/sessions/{sid}/state", page(session_state), methods=["GET"])
    app.add_api_route("/ui/sessions/{sid}/records", page(session_records), methods=["GET"])
    app.add_api_route("/ui/sessions/{sid}/trace", page(trace), methods=["GET"])
    app.add_api_route("/ui/sessions/{sid}/{action}", page(session_action), methods=["POST"])
    app.add_api_route("/ui/events", page(events), methods=["GET"])
    app.add_api_route("/ui/events/{eid}", page(event), methods=["GET"])
    app.add_api_route("/ui/events/{eid}/redispatch", page(redispatch), methods=["POST"])
