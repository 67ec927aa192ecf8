"""SDK functions served by the system: events, signals, child sessions, values, outcomes.

Inside a session each call is a durable step (journaled, replayed). Outside the system they
are stand-ins (fake ids, an in-memory store) so handlers can be imported and unit-tested.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import _runtime, _values
from .attr_dict import AttrDict
from .body import with_body
from .errors import AutoKittehError
from .event import Event


@dataclass
class Signal:
    """A signal a session received. For a child's end, ``name`` is the child's session id and
    ``payload`` is ``{'completed': True, 'value': <return value>}`` or ``{'completed': False}``.
    Payloads and return values are values (see ``autokitteh._values``)."""

    name: str
    payload: Any


def _where() -> str:
    """file:line of the user's call (the first frame outside this package)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and str(frame.f_globals.get("__name__", "")).startswith(
        "autokitteh"
    ):
        frame = frame.f_back
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def _call(name: str, args: dict[str, Any], blob: bytes = b"") -> Any:
    rt = _runtime._runtime
    if rt is None:
        raise AutoKittehError(
            f"autokitteh.{name}: only a session's own process can do this; this one is not "
            "(a process forked from the session's, or code run outside a session)"
        )
    return rt.syscall(name, args, blob, _where())


def _inside() -> bool:
    """In a session (or in a process forked from one, where ``_call`` says it cannot)."""
    return _runtime._runtime is not None or _runtime.forked


def _seconds(timeout: timedelta | int | float | None) -> float | None:
    if timeout is None:
        return None
    secs = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    return secs if secs > 0 else None  # 0 waits forever, as in AutoKitteh


def _plain(value: Any, what: str) -> Any:
    """Checks that ``value`` is JSON data (memos, outcomes) and returns it."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise AutoKittehError(
            f"{what} must be plain data (dict, list, str, number, bool, None): {e}"
        ) from None


# --- events


def subscribe(source: str, filter: str = "") -> str:  # noqa: A002  (AutoKitteh's name)
    """Subscribes to events of the project's trigger ``source``; returns a subscription id."""
    if not _inside():
        return str(uuid.uuid4())
    return str(_call("subscribe", {"source": source, "filter": filter}))


def next_event(
    subscription_id: str | list[str],
    *,
    timeout: timedelta | int | float | None = None,
    full: bool = False,
) -> AttrDict | Event | None:
    """The next event of the subscription(s), oldest first; None when ``timeout`` passes."""
    if not _inside():
        return None
    rt = _runtime._runtime
    if rt is not None and rt.in_activity:
        raise AutoKittehError(
            "next_event inside activity: waiting for events is not allowed in an activity; "
            "call it from the handler's own code"
        )
    subs = [subscription_id] if isinstance(subscription_id, str) else list(subscription_id)
    ev = _call("next_event", {"subscriptions": subs, "timeout": _seconds(timeout)})
    if ev is None:
        return None
    data = AttrDict(with_body(ev["data"] or {}))
    if full:
        return Event(data=data, event_type=ev.get("event_type"), event_id=ev.get("event_id"))
    return data


def unsubscribe(subscription_id: str) -> None:
    if _inside():
        _call("unsubscribe", {"subscription": subscription_id})


# --- sessions and signals


def start(
    loc: str,
    data: dict[str, Any] | None = None,
    memo: dict[str, str] | None = None,
    project: str = "",
) -> str:
    """Starts a child session at ``file.py:function`` with ``event.data = data`` (a dict of
    values: JSON types, bytes, datetime, timedelta, set, tuple), in the caller's project."""
    if not isinstance(data or {}, dict):
        raise AutoKittehError(f"start data must be a dict, not {type(data).__name__}")
    inputs = _values.to_data(data or {}, "start data")
    if _values.TAG in inputs:
        raise AutoKittehError("start data: its keys must be strings other than '__ak__'")
    if not _inside():
        return "ses_" + "0" * 26
    args = {
        "loc": loc,
        "data": inputs,
        "memo": _plain(memo or {}, "start memo"),
        "project": project,
    }
    return str(_call("start", args))


def signal(session_id: str, name: str, payload: Any = None) -> None:
    """Sends a named signal to a session of the same project. The payload is a value (JSON
    types, bytes, datetime, timedelta, set, tuple); anything else raises NotAValue."""
    blob = _values.dumps(payload, "signal payload")
    if _inside():
        _call("signal", {"session_id": session_id, "name": name}, blob)


def next_signal(
    name: str | list[str], *, timeout: timedelta | int | float | None = None
) -> Signal | None:
    """Waits for a signal by name, or for a child session's end by passing its id."""
    if not _inside():
        return None
    rt = _runtime._runtime
    if rt is not None and rt.in_activity:
        raise AutoKittehError(
            "next_signal inside activity: waiting for signals is not allowed in an activity; "
            "call it from the handler's own code"
        )
    names = [name] if isinstance(name, str) else list(name)
    got = _call("next_signal", {"names": names, "timeout": _seconds(timeout)})
    if got is None:
        return None
    if "completed" in got:
        payload: Any = {"completed": got["completed"]}
        if got["completed"]:
            payload["value"] = _decoded(got.get("value"), "the child's return value")
        return Signal(got["name"], payload)
    return Signal(got["name"], _decoded(got.get("payload"), "signal payload"))


def _decoded(raw: bytes | None, what: str) -> Any:
    return _values.loads(raw, what) if raw else None


# --- outcomes and webhooks


def outcome(value: Any, *, event_id: str | None = None) -> None:
    """Records an outcome for the triggering (or given) event."""
    if _inside():
        _call("outcome", {"value": _plain(value, "outcome"), "event_id": event_id})


def http_outcome(
    status_code: int = 200,
    *,
    body: Any = None,
    json: Any = None,  # noqa: A002
    headers: dict[str, str] | None = None,
    more: bool = False,
    event_id: str | None = None,
) -> None:
    """The HTTP response of a sync webhook (``is_sync: true``)."""
    if body is not None and json is not None:
        raise ValueError("http_outcome: give body or json, not both")
    answer: dict[str, Any] = {
        "status_code": status_code,
        "body": body,
        "json": json,
        "headers": dict(headers or {}),
        "more": more,
    }
    if isinstance(body, (bytes, bytearray, memoryview)):
        # Written as given, as AutoKitteh does: text as text, other bytes (an image, a
        # file) carried in base64 through the outcome, which holds JSON data only. They
        # were decoded with their bad bytes replaced before, which broke every binary body.
        raw = bytes(body)
        try:
            answer["body"] = raw.decode()
        except UnicodeDecodeError:
            answer["body"], answer["body_base64"] = None, base64.b64encode(raw).decode("ascii")
    outcome(answer, event_id=event_id)


def get_webhook_url(trigger_name: str) -> str:
    url = os.environ.get(f"{trigger_name}__webhook_url")
    if not url:
        raise ValueError(f"no webhook URL for trigger {trigger_name!r}")
    return url
