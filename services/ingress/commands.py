"""API operations that ingress carries out itself (they publish to JetStream or concern the
caller), each taking its typed request (``akcore.requests``) and the caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from akcore import bus, credheaders, eventdata, ids, ops, scope, timefmt, tokens, wire
from akcore import requests as rq
from akcore.datakey import Keyring
from akcore.errors import Conflict, InvalidArgument, NotFound
from nats.aio.client import Client

from . import confine
from .auth import Caller
from .intake import check_size, store_event


async def event_redispatch(
    nc: Client, req: rq.EventRef, caller: Caller, keys: Keyring
) -> dict[str, Any]:
    """Dispatches a copy of a stored event under a new id (its data, sealed to the stored
    event, opened here and sealed to the copy: it never crosses NATS in the clear)."""
    ev = await bus.store_call(nc, "event.get", {"event_id": req.event_id, "sealed": True})
    data = eventdata.open_data(ev["sealed_data"], ev["project_id"], ev["event_id"], keys)
    copy = wire.Event(
        event_id=ids.new_id("evt"),
        project_id=ev["project_id"],
        destination_id=ev["destination_id"],
        event_type=ev["event_type"],
        data=credheaders.unseal(data, ev["project_id"], keys),
        memo={**ev["memo"], "redispatched_from": ev["event_id"]},
        created_at_us=timefmt.now_us(),
    )
    await store_event(nc, copy, keys)
    return {"event_id": copy.event_id}


async def _resolve_destination(nc: Client, destination: str) -> tuple[str, str]:
    """The (project id, destination id) of a hand-made event: a trigger (``trg_`` id) or a
    connection (``con_`` id or ``PROJECT/NAME``)."""
    if ids.is_id(destination, "trg"):
        t = await bus.store_call(nc, "trigger.get", {"trigger": destination})
        return str(t["project_id"]), str(t["trigger_id"])
    if not destination:
        raise InvalidArgument(
            "the event has no destination: give --connection PROJECT/NAME (or a con_ id), "
            "or a destination_id (a trg_ or con_ id) in the --from-file JSON"
        )
    c = await bus.store_call(nc, "connection.get", {"connection": destination})
    return str(c["project_id"]), str(c["connection_id"])


def _new_event(req: rq.EventNew, project_id: str, destination_id: str) -> wire.Event:
    return wire.Event(
        event_id=ids.new_id("evt"),
        project_id=project_id,
        destination_id=destination_id,
        event_type=req.event_type,
        data=req.data,
        memo=req.memo,
        created_at_us=timefmt.now_us(),
    )


async def event_dispatch(
    nc: Client, req: rq.EventNew, caller: Caller, keys: Keyring
) -> dict[str, Any]:
    """Dispatches a hand-made event as a webhook's would be: kept, then matched against
    its destination: a trigger, or a connection's triggers and subscriptions."""
    ev = _new_event(req, *await _resolve_destination(nc, req.destination))
    await store_event(nc, ev, keys)
    return {"event_id": ev.event_id}


async def event_save(nc: Client, req: rq.EventNew, caller: Caller, keys: Keyring) -> dict[str, Any]:
    """Keeps a hand-made event without dispatching it."""
    ev = _new_event(req, *await _resolve_destination(nc, req.destination))
    args = {
        "event_id": ev.event_id,
        "project_id": ev.project_id,
        "destination_id": ev.destination_id,
        "event_type": ev.event_type,
        "data": ev.data,
        "memo": ev.memo,
    }
    check_size(nc, len(wire.encode(wire.StoreRequest(args=args))))
    await bus.store_call(nc, "event.store", args)
    return {"event_id": ev.event_id}


async def build_prepare(
    nc: Client, req: rq.PyenvPrepare, caller: Caller, keys: Keyring
) -> dict[str, Any]:
    """Has a runner build (or reuse) the Python environment of a requirements.txt, before
    ``ak deploy`` changes anything; ``token``/``offset`` follow pip's progress; ``within``:
    the projects of a token limited to them (``confine`` set it), built for one at a time."""
    args = {
        "requirements": req.requirements,
        "token": req.token,
        "offset": req.offset,
        "within": list(req.within),
    }
    return await bus.runner_call(nc, "pyenv.prepare", args, timeout=60)  # type: ignore[no-any-return]


async def create_token(nc: Client, req: rq.TokenCreate, caller: Caller, keys: Keyring) -> str:
    """A new API token: the store keeps its digest; the raw token is answered only here.
    Not while tokens are off: any process that reaches the port (a handler, a web page) could
    make one, and it would stay valid once tokens are turned on."""
    if not caller.token_id:
        raise Conflict(
            "API tokens are off on this server (dev mode on a loopback address), so a token "
            "made now could have been made by anything that reaches the port: turn them on "
            "(AK_AUTH__TOKENS=on; `ak up` then stores a first token for the CLI) and make "
            "tokens with that one"
        )
    token = tokens.new_token()
    add: dict[str, Any] = {
        "digest": tokens.digest(token),
        "name": req.name,
        "created_by": caller.token_id,
    }
    if expires := _expiry(req.expires_in, caller.expires_us):
        add["expires_us"] = expires  # (only then: a store of an earlier version has none)
    if projects := await _projects(nc, req.projects, caller):
        add["projects"] = projects
    await bus.store_call(nc, "token.add", add)
    return token


def _expiry(expires_in: int, maker_expires_us: int) -> int:
    """When a new token expires (0: never): ``expires_in`` seconds from now, or when its
    maker's does when not given. A token expiring makes none that outlive it: expiry would
    otherwise be undone by a token made the minute before."""
    if not 0 <= expires_in <= tokens.MAX_EXPIRES_IN:
        raise InvalidArgument(
            f"a token expires within {tokens.MAX_EXPIRES_IN // (365 * 86400)} years: "
            f"{expires_in} s is out of range"
        )
    if not expires_in:
        return maker_expires_us
    expires = timefmt.now_us() + expires_in * 1_000_000
    if maker_expires_us and expires > maker_expires_us:
        raise InvalidArgument(
            f"the token calling expires at {timefmt.rfc3339(maker_expires_us)}, and the tokens "
            "it makes may not outlive it: ask for an earlier expiry (--expires), or make "
            "this one with a token that lasts longer"
        )
    return expires


async def _projects(nc: Client, asked: list[str], caller: Caller) -> list[str]:
    """The ids of the projects a new token is limited to: ``asked`` (names or ids), each of
    the caller's own projects when its token is limited; the caller's when none is asked."""
    if not asked:
        return list(caller.projects)
    refs = [(scope.PROJECT, str(p), "") for p in dict.fromkeys(asked)]
    if caller.projects:  # (the ids checked are the ones kept)
        return await confine.check(nc, refs, caller)
    found = await confine.resolve(nc, refs)
    for (_, name, _), project_id in zip(refs, found, strict=True):
        if not project_id:
            raise NotFound(f'project "{name}" not found (ak project list)')
    return found


async def whoami(nc: Client, req: rq.Empty, caller: Caller, keys: Keyring) -> dict[str, Any]:
    """The calling token; ``projects``: the names of those it is limited to (none: it may
    act on every project)."""
    expires = timefmt.rfc3339(caller.expires_us) if caller.expires_us else ""
    projects = await confine.names(nc, caller) if caller.projects else []
    return {
        "token_id": caller.token_id,
        "name": caller.name,
        "created_at": caller.created_at,
        "expires_at": expires,
        "projects": projects,
    }


Command = Callable[[Client, Any, Caller, Keyring], Awaitable[Any]]

RUNNER_PATIENCE = 20.0  # seconds an operation waits for a runner when none is there

COMMANDS: dict[str, Command] = {
    "event.redispatch": event_redispatch,
    "event.dispatch": event_dispatch,
    "event.save": event_save,
    "build.prepare": build_prepare,
    "auth.create_token": create_token,
    "auth.whoami": whoami,
}
assert set(COMMANDS) == set(ops.served_by(ops.Service.INGRESS)), "commands differ from akcore.ops"


async def perform(
    nc: Client, name: str, args: dict[str, Any], caller: Caller, keys: Keyring, timeout: float = 60
) -> Any:
    """Runs the public operation ``name`` for ``caller``: parsed first (InvalidArgument
    when malformed), then carried out here or by the store (Unavailable when it has not
    answered within ``timeout`` seconds). The API and the UI call this."""
    op = ops.public(name)
    typed = op.parse(args)  # refused here when malformed, before anything runs
    if caller.projects:  # a token limited to projects: narrowed to them, or refused
        args = await confine.confine(nc, op, args, typed, caller)
        typed = op.parse(args)
    if op.service is ops.Service.INGRESS:
        return await COMMANDS[name](nc, typed, caller, keys)
    if op.service is ops.Service.RUNNER:  # a runner restarting answers within seconds
        patience = min(timeout, RUNNER_PATIENCE)
        return await bus.runner_call(nc, name, args, timeout=timeout, patience=patience)
    return await bus.store_call(nc, name, args, timeout=timeout)
