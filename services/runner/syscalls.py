"""What a session's worker asks the system for: events, signals, child sessions, values."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from akcore import bus, credheaders, eventdata, ids, parking, subjects, wire
from akcore.datakey import Keyring
from akcore.errors import AKError, InvalidArgument, NotFound, Unavailable
from akcore.journal import Kind
from akcore.journalio import session_project
from akcore.manifest import parse_call
from akcore.sessions import not_started, publish_session
from autokitteh import _values
from autokitteh.errors import AutoKittehError
from nats.aio.client import Client
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from . import connections
from .inbox import Inbox, open_payload, seal_payload
from .values import Values


class SyscallError(Exception):
    """A refused system call; its message reaches the handler as an AutoKittehError."""


def _filter_problem(flt: str) -> str:
    """Why ``flt`` is not a filter, or "". Called off the event loop: parsing a filter takes
    up to ~50 ms (the limits of ``akcore.cellimits``), the first ever ~0.15 s more."""
    from akcore import cel  # only here: building its parser takes a runner's start ~0.15 s

    try:
        cel.validate_filter(flt)
    except cel.FilterError as e:
        return str(e)
    return ""


class Syscalls:
    """Serves one session. ``call`` returns (result, inbox sequence taken, if any)."""

    def __init__(
        self,
        nc: Client,
        job: wire.Job,
        inbox: Inbox,
        js: JetStreamContext | None = None,
        keys: Keyring | None = None,
    ) -> None:
        """``keys`` open the credential headers of events (none: they stay sealed)."""
        self.nc, self.job, self.inbox, self.keys = nc, job, inbox, keys
        self.js = js or nc.jetstream()
        self.pub = bus.publisher(nc)
        self._values: Values | None = None
        self.subscribed = False  # its subscriptions are removed when the session ends
        self._own: set[str] = {job.session_id}  # sessions known to be of the same project
        self.key = ""  # the call being served's (see ``call``)

    async def call(
        self, name: str, args: dict[str, Any], blob: bytes, step: int | None, key: str = ""
    ) -> tuple[Any, int | None]:
        """Serves system call ``name`` (``step``: its durable step, None outside one).
        Arguments of the wrong type are the handler's error, not the runner's. ``key``:
        the same for every try of one call (``Session._serve`` tries again while the store
        is away), so that what a try makes (a subscription) is made once whichever try the
        store carries out."""
        handler = _TABLE.get(name)
        if handler is None:
            raise SyscallError(f"unknown system call {name!r}")
        self.key = key or uuid.uuid4().hex
        try:
            return await handler(self, args, blob, step)
        except Unavailable:  # the store away: the call waits for it (``Session._serve``)
            raise
        except AKError as e:
            raise SyscallError(e.message) from None
        except AutoKittehError as e:  # data from the worker that is not a value
            raise SyscallError(str(e)) from None
        except (TypeError, ValueError, KeyError) as e:
            raise SyscallError(f"bad arguments: {e!r}") from None
        except MaxPayloadError:
            raise SyscallError(
                f"what it sends is over the NATS message limit ({self.nc.max_payload} bytes): "
                "send less (keep big data elsewhere and send a reference)"
            ) from None

    # --- events

    async def _subscribe(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        source, flt = str(args.get("source", "")), str(args.get("filter") or "")
        try:
            found = await bus.store_call(
                self.nc, "source.resolve", {"project_id": self.job.project_id, "source": source}
            )
        except NotFound:
            raise SyscallError(
                f'subscribe({source}, {flt}) -> source "{source}" not found'
            ) from None
        problem = await asyncio.to_thread(_filter_problem, flt)
        if problem:
            raise SyscallError(problem)
        sub_id = str(uuid.uuid5(_SUBSCRIPTIONS, f"{self.job.session_id}/{self.key}"))
        self.subscribed = True
        await bus.store_call(
            self.nc,
            "subscription.create",
            {
                "subscription_id": sub_id,
                "session_id": self.job.session_id,
                "project_id": self.job.project_id,
                "trigger_id": found["destination_id"],
                "filter": flt,
            },
        )
        return sub_id, None

    async def _unsubscribe(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        sub = {
            "subscription_id": str(args.get("subscription", "")),
            "session_id": self.job.session_id,
        }
        await bus.store_call(self.nc, "subscription.delete", sub)
        return None, None

    async def _next_event(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        subs = [str(s) for s in args.get("subscriptions") or []]
        got = await self.inbox.take(
            subs,
            lambda m: m.subscription_id if m.kind == wire.INBOX_EVENT else None,
            args.get("timeout"),
        )
        if got is None:
            return None, None
        seq, msg = got
        if self.keys is None or not isinstance(msg.event, dict):
            return msg.event, seq
        event = dict(msg.event)
        if "sealed_data" in event:
            blob, event_id = event.pop("sealed_data"), str(event.get("event_id"))
            event["data"] = eventdata.open_data(blob, self.job.project_id, event_id, self.keys)
        data = credheaders.unseal(event.get("data"), self.job.project_id, self.keys)
        return {**event, "data": data}, seq

    # --- signals and child sessions

    async def _signal(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        target = str(args.get("session_id", ""))
        if not ids.is_id(target, "ses"):
            raise SyscallError(f"{target!r} is not a session id")
        _values.loads(blob, "signal payload")  # data, never a pickle: checked before it goes
        await self._own_session(target)
        if await self._has_ended(target):  # (its inbox would keep it until purged: for nothing)
            raise SyscallError(f'session "{target}" has ended: it takes no more signals')
        msg = wire.InboxMessage(
            kind=wire.INBOX_SIGNAL, name=str(args.get("name", "")), payload=blob or None
        )
        if self.keys is not None:
            msg = seal_payload(self.keys, msg, target)
        msg_id = f"sig:{self.job.session_id}:{step}" if step else ids.new_id("sig")
        await self.pub.publish(
            subjects.inbox_subject(target),
            wire.encode(msg),
            headers={subjects.HDR_MSG_ID: msg_id, **parking.inbox_headers(msg)},
        )
        return None, None

    async def _has_ended(self, session_id: str) -> bool:
        """Whether a session of this project has ended: its journal's last record ends it,
        or it has no journal left and the store has it ended."""
        try:
            last = await self.js.get_last_msg(
                subjects.STREAM_JOURNAL, subjects.journal_subject(session_id)
            )
        except NotFoundError:
            found = await bus.store_call(self.nc, "session.get", {"session": session_id})
            return found["state"] in wire.FINAL_STATES
        return wire.decode(wire.JournalRecord, last.data or b"").kind == wire.ENDED

    async def _own_session(self, session_id: str) -> None:
        """Refuses a session of another project as one that does not exist (so that ids
        cannot be probed). Its journal says whose it is; once cleaned up, the store does."""
        if session_id in self._own:
            return
        project = await session_project(self.js, session_id)
        if project is None:
            try:
                found = await bus.store_call(self.nc, "session.get", {"session": session_id})
                project = found["project_id"]
            except NotFound:
                pass
        if project != self.job.project_id:
            raise SyscallError(f'session "{session_id}" not found')
        self._own.add(session_id)

    async def _next_signal(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        names = [str(n) for n in args.get("names") or []]

        def key(m: wire.InboxMessage) -> str | None:
            return m.name if m.kind in (wire.INBOX_SIGNAL, wire.INBOX_CHILD_END) else None

        got = await self.inbox.take(names, key, args.get("timeout"))
        if got is None:
            return None, None
        seq, msg = got
        payload = msg.payload
        if self.keys is not None:
            payload = open_payload(self.keys, msg, self.job.session_id)
        if msg.kind == wire.INBOX_CHILD_END:
            return {"name": msg.name, "completed": msg.completed, "value": payload}, seq
        return {"name": msg.name, "payload": payload}, seq

    async def _start(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        loc = str(args.get("loc", ""))
        try:
            parse_call(loc)
        except InvalidArgument as e:
            raise SyscallError(e.message) from None
        job = self.job
        inputs = args.get("data") or {}
        if not isinstance(_values.from_data(inputs, "start data"), dict):
            raise SyscallError("start data must be a dict")
        memo = args.get("memo") or {}
        if not isinstance(memo, dict):
            raise SyscallError(f"start memo must be a dict, not {type(memo).__name__}")
        memo = wire.memo_text({str(k): v for k, v in memo.items()})
        deployment_id, build_id = job.deployment_id, job.build_id
        if args.get("project"):
            await self._own_project(str(args["project"]))
            target = await bus.store_call(self.nc, "project.active", {"project": args["project"]})
            deployment_id, build_id = target["deployment_id"], target["build_id"]
        # A replayed step names the same child (JetStream drops the repeat): its id derives
        # from the parent's and the step.
        key = f"{job.session_id}:start:{step}"
        sid = ids.derived_id("ses", ids.time_ms(job.session_id), key) if step else ids.new_id("ses")
        child = wire.Job(
            session_id=sid,
            project_id=job.project_id,
            deployment_id=deployment_id,
            build_id=build_id,
            entrypoint=loc,
            is_durable=job.is_durable,
            event_id=None,
            event_type=None,
            data=inputs,  # values as data (autokitteh._values): the child's worker decodes them
            parent_session_id=job.session_id,
            memo=memo,
        )
        if not step or await not_started(self.nc, [child]):  # (a replay may start it again)
            await publish_session(self.pub, child, self.keys)
        self._own.add(sid)
        return sid, None

    async def _own_project(self, project: str) -> None:
        """Refuses another project as one that does not exist: a session starts children
        only in its own project."""
        try:
            found = await bus.store_call(self.nc, "project.get", {"project": project})
        except NotFound:
            found = {}
        if found.get("project_id") != self.job.project_id:
            raise SyscallError(f'project "{project}" not found')

    # --- values

    async def _store(self) -> Values:
        if self._values is None:
            if self.keys is None:
                raise SyscallError("the values store needs the data keys")
            kv = await bus.values_bucket(self.js)
            self._values = Values(kv, self.job.project_id, self.keys)
        return self._values

    async def _value(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        values = await self._store()
        data = list(args.get("args") or [])
        for d in data:  # stored for every session of the project to read: values only
            _values.from_data(d, "a stored value")
        return await values.apply(str(args["key"]), str(args["op"]), data), None

    async def _value_keys(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        return await (await self._store()).keys(), None

    async def _value_publish(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        await (await self._store()).publish(str(args["key"]), bool(args.get("published")))
        return None, None

    # --- outcomes

    async def _outcome(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        event_id = str(args.get("event_id") or self.job.event_id or "")
        if not event_id:
            raise SyscallError("the session was not started by an event: pass event_id")
        await self._own_event(event_id)
        await self.nc.publish(
            subjects.outcome_subject(event_id),
            wire.pack({"session_id": self.job.session_id, "value": args.get("value")}),
        )
        return None, None

    async def _own_event(self, event_id: str) -> None:
        """Refuses an event of another project as one that does not exist: a session answers
        its own event, or one of its project's that reached it through a subscription. The
        events stream says whose an event is; once it has aged out, the store does."""
        if event_id == self.job.event_id:
            return
        if ids.is_id(event_id, "evt"):
            subject = subjects.event_subject(self.job.project_id, event_id)
            try:
                await self.js.get_last_msg(subjects.STREAM_EVENTS, subject)
                return
            except NotFoundError:
                pass
            try:
                ref = {"event_id": event_id, "sealed": True}  # whose: its data stays sealed
                event = await bus.store_call(self.nc, "event.get", ref)
                if event["project_id"] == self.job.project_id:
                    return
            except NotFound:
                pass
        raise SyscallError(f'event "{event_id}" not found')

    # --- connections

    async def _encode_jwt(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        payload, algorithm = args["payload"], str(args.get("algorithm", ""))
        connection = str(args.get("connection", ""))
        if not isinstance(payload, dict):
            raise SyscallError("payload must be a dict of claims")
        # Only for a GitHub app connection of the session's own project.
        pid = self.job.project_id
        try:
            found = await bus.store_call(
                self.nc, "source.resolve", {"project_id": pid, "source": connection}
            )
        except NotFound:
            found = {}
        env = await bus.store_call(self.nc, "session.env", {"project_id": pid})
        app_id = env.get(f"{connection}__app_id", "")
        real = found.get("kind") == "connection" and (
            env.get(f"{connection}__connection_id") == found.get("destination_id")
        )
        if not real or not app_id:
            raise SyscallError(
                f'connection "{connection}" not found, or not a GitHub app connection '
                "(it has no app_id)"
            )
        try:
            return connections.encode_jwt(payload, algorithm, app_id), None
        except connections.JWTError as e:
            raise SyscallError(str(e)) from None

    async def _refresh_oauth(
        self, args: dict[str, Any], blob: bytes, step: int | None
    ) -> tuple[Any, int | None]:
        raise SyscallError(
            f"OAuth is not supported by this server yet: no OAuth configuration for "
            f"integration {str(args.get('integration', ''))!r} (connection "
            f"{str(args.get('connection', ''))!r}); use the integration's token vars instead"
        )


Handler = Callable[[Syscalls, dict[str, Any], bytes, int | None], Awaitable[tuple[Any, int | None]]]

# Every system call a worker may ask for, by the name the SDK and the journal give it.
_SUBSCRIPTIONS = uuid.UUID("6b3f6c2e-3b8e-4f55-9d54-5d2a4b1c7e01")  # (uuid5's namespace)

_TABLE: dict[str, Handler] = {
    Kind.SUBSCRIBE: Syscalls._subscribe,
    Kind.UNSUBSCRIBE: Syscalls._unsubscribe,
    Kind.NEXT_EVENT: Syscalls._next_event,
    Kind.SIGNAL: Syscalls._signal,
    Kind.NEXT_SIGNAL: Syscalls._next_signal,
    Kind.START: Syscalls._start,
    Kind.VALUE: Syscalls._value,
    Kind.VALUE_KEYS: Syscalls._value_keys,
    Kind.VALUE_PUBLISH: Syscalls._value_publish,
    Kind.OUTCOME: Syscalls._outcome,
    Kind.ENCODE_JWT: Syscalls._encode_jwt,
    Kind.REFRESH_OAUTH: Syscalls._refresh_oauth,
}
