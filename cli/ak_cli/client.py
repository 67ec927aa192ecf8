"""The CLI's HTTP client: every command except ``ak up`` is a call to ingress ``/api``."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from akcore import wire
from akcore.config import DEFAULT_SERVICE_URL, ENV_SERVICE_URL, ENV_TIMEOUT, ENV_TOKEN
from akcore.errors import AKError, Unauthenticated, Unavailable, error_from_kind

from . import credentials

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def parse_duration(text: str) -> float:
    """Go-style durations as AutoKitteh takes them: ``500ms``, ``10s``, ``2m``, ``1h``, ``30``."""
    m = _DURATION_RE.match(text.strip())
    if not m:
        raise AKError(f"invalid duration {text!r}: use e.g. 500ms, 10s, 2m")
    n, unit = float(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def service_url() -> str:
    return os.environ.get(ENV_SERVICE_URL, DEFAULT_SERVICE_URL).rstrip("/")


def call(op: str, **args: Any) -> Any:
    """Runs one operation on the server and returns its result; raises AKError on failure."""
    url = f"{service_url()}/api/{op}"
    timeout = parse_duration(os.environ.get(ENV_TIMEOUT, "60s"))
    headers = {"Content-Type": "application/msgpack"}
    token = credentials.token_for(service_url())
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        url, data=wire.encode(wire.StoreRequest(args=args)), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        if e.headers.get("Content-Type", "") != "application/msgpack":
            raise AKError(f"server answered {e.code} for {op}: {body[:200]!r}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Unavailable(
            f"cannot reach the server at {service_url()} ({getattr(e, 'reason', e)}): "
            f"start it with `ak up --mode dev` or set {ENV_SERVICE_URL}"
        ) from None
    reply = wire.decode(wire.StoreReply, body)
    if not reply.ok:
        if reply.error_kind == Unauthenticated.kind:
            raise Unauthenticated(
                f"{reply.error} (this CLI read {ENV_TOKEN} and {credentials.path()})"
            )
        raise error_from_kind(reply.error_kind, reply.error)
    return reply.result


def records(ref: str, kinds: list[str] | None = None, skip: int = 0) -> Iterator[dict[str, Any]]:
    """A session's records from ``skip`` on, fetched a page at a time (a long session's
    would not fit in one answer). ``ref`` may name a project: its newest session at the
    first page is the one read to the end."""
    session = ref
    while True:
        args: dict[str, Any] = {"session": session, "skip": skip}
        if kinds:
            args["kinds"] = kinds
        page = call("session.records", **args)
        session = page["session_id"]
        yield from page["records"]
        skip += len(page["records"])
        if not page.get("more"):
            return
