"""The CLI's HTTP client: every command except ``ak up`` is a call to ingress ``/api``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

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


_PROXY_VARS = frozenset({"http_proxy", "https_proxy", "all_proxy"})


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str, bytes]:
    """POSTs ``body``: the status, the answer's Content-Type and its body; OSError when
    the server cannot be reached. With http.client directly: urllib.request (~7 ms more
    to import) is kept for a proxy set in the environment, which it honours, and for a
    URL that is not http(s), which it refuses in its own words."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or any(k.lower() in _PROXY_VARS for k in os.environ):
        return _post_urllib(url, body, headers, timeout)
    import http.client

    conn_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_class(parts.netloc, timeout=timeout)
    try:
        conn.request(
            "POST", f"{parts.path}?{parts.query}" if parts.query else parts.path, body, headers
        )
        resp = conn.getresponse()
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    finally:
        conn.close()


def _post_urllib(
    url: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, str, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()
    except urllib.error.URLError as e:
        raise OSError(e.reason) from None


def call(op: str, **args: Any) -> Any:
    """Runs one operation on the server and returns its result; raises AKError on failure."""
    url = f"{service_url()}/api/{op}"
    timeout = parse_duration(os.environ.get(ENV_TIMEOUT, "60s"))
    headers = {"Content-Type": "application/msgpack"}
    token = credentials.token_for(service_url())
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        status, content_type, body = _post(
            url, wire.encode(wire.StoreRequest(args=args)), headers, timeout
        )
    except OSError as e:
        raise Unavailable(
            f"cannot reach the server at {service_url()} ({e}): "
            f"start it with `ak up --mode dev` or set {ENV_SERVICE_URL}"
        ) from None
    if not 200 <= status < 300 and content_type != "application/msgpack":
        raise AKError(f"server answered {status} for {op}: {body[:200]!r}")
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
