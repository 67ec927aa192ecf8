"""What the UI's pages show, shaped from the API's answers: journal rows, the trace as a
waterfall, an event's data made readable. Pure: no I/O (``ui`` fetches, templates render)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from akcore import cron, timefmt
from akcore.errors import InvalidArgument

# Sessions in these states change no more: their pages stop polling.
FINAL_STATES = frozenset({"COMPLETED", "ERROR", "STOPPED"})
STATES = ("CREATED", "RUNNING", "COMPLETED", "ERROR", "STOPPED")
HEX_SHOWN = 4096  # bytes of a binary body shown as hex


@dataclass
class JournalRow:
    seq: int
    kind: str
    t_us: int
    summary: str
    detail: str = ""  # an error or a traceback, shown preformatted
    mark: str = ""  # "attempt 2", "retry": what a reader should notice


def _activity(data: dict[str, Any]) -> tuple[str, str]:
    head = f"#{data.get('step')} {data.get('function', '')}"
    if data.get("digest"):
        head += f" (args {str(data['digest'])[:12]})"
    head += " ok" if data.get("ok") else " failed"
    ran = data.get("duration_us")
    if isinstance(ran, int) and ran > 0:
        head += f" in {ms_text(ran)}"
    return head, str(data.get("error") or "")


def ms_text(us: int) -> str:
    """A duration in microseconds as a person reads it: ``0.42 ms``, ``12 ms``, ``3.1 s``."""
    if us < 10_000:
        return f"{us / 1000:.2f} ms"
    if us < 1_000_000:
        return f"{us / 1000:.0f} ms"
    if us < 60_000_000:
        return f"{us / 1_000_000:.1f} s"
    return f"{us / 60_000_000:.1f} min"


def journal_row(rec: dict[str, Any]) -> JournalRow:
    """One journal record as a row of the session page's journal."""
    kind, data = str(rec["kind"]), rec.get("data") or {}
    row = JournalRow(int(rec["seq"]), kind, int(rec["t_us"]), "")
    if kind == "created":
        row.summary = f"created: {data.get('entrypoint', '')}"
    elif kind == "started":
        attempt = int(data.get("attempt", 1))
        row.summary = f"started on {data.get('runner', '')}"
        if attempt > 1:
            replayed = data.get("replayed_steps", 0)
            row.mark = f"attempt {attempt}, {replayed} steps replayed"
    elif kind == "print":
        row.summary = str(data.get("text", ""))
    elif kind == "activity":
        row.summary, row.detail = _activity(data)
    elif kind == "sleep":
        row.summary = f"#{data.get('step')} sleep {float(data.get('seconds', 0)):g} s"
    elif kind == "retry":
        row.summary, row.mark = (
            str(data.get("error", "")),
            f"retry of attempt {data.get('attempt')}",
        )
    elif kind == "parked":
        deadline = int(data.get("deadline_us") or 0)
        until = f"parked until {timefmt.rfc3339(deadline)}" if deadline else "parked"
        row.summary = f"#{data.get('step')} {until}, waiting for {data.get('reason', '')}"
    elif kind == "ended":
        row.summary = str(data.get("state", ""))
        row.detail = "\n".join(x for x in (data.get("error"), data.get("traceback")) if x)
    else:  # a system call
        args = data.get("args") or {}
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(args.items()))
        row.summary = f"#{data.get('step')} {kind}({shown[:300]})"
        row.detail = str(data.get("error") or "")
    return row


def pretty(value: Any) -> str:
    """JSON, indented, for a person (what JSON cannot hold is shown by its repr)."""
    return json.dumps(
        _sortable(value), indent=2, sort_keys=True, ensure_ascii=False, default=_readable
    )


SHOWN_DEPTH = 100  # levels of lists and maps shown; deeper ones by a note


def _sortable(value: Any, depth: int = 0) -> Any:
    """``value`` with every map's keys as text, so that ``json.dumps`` can sort and write
    them: a hand-made event's data and a session's inputs are any msgpack value, whose
    keys may be numbers, bytes or null, mixed with text (a key that is not text shows as
    its repr, so ``1`` and ``"1"`` stay apart). Lists and maps nested deeper than
    SHOWN_DEPTH (kept before the API refused them) are shown by a note."""
    if not isinstance(value, (dict, list, tuple)):
        return value
    if depth >= SHOWN_DEPTH:
        return f"<nested deeper than {SHOWN_DEPTH} levels: not shown>"
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else repr(k)): _sortable(v, depth + 1)
            for k, v in value.items()
        }
    return [_sortable(v, depth + 1) for v in value]


def _readable(value: Any) -> Any:
    if isinstance(value, bytes):
        return body_text(value)
    return repr(value)


def body_text(body: bytes) -> str:
    """A body as text when it is UTF-8, else as hex (the first ``HEX_SHOWN`` bytes)."""
    try:
        return body.decode()
    except UnicodeDecodeError:
        more = f" ... ({len(body)} bytes)" if len(body) > HEX_SHOWN else ""
        return body[:HEX_SHOWN].hex(" ") + more


def event_view(event: dict[str, Any]) -> dict[str, Any]:
    """An event's data for its page: the body's JSON or text apart, the rest as JSON."""
    data = dict(event.get("data") or {})
    body = data.pop("body", None)
    shown: dict[str, Any] = {"data": pretty(data), "body": "", "body_kind": ""}
    if isinstance(body, dict):
        if body.get("json") is not None:
            shown.update(body=pretty(body["json"]), body_kind="JSON")
        elif body.get("text") is not None:
            shown.update(body=str(body["text"]), body_kind="text")
        elif isinstance(body.get("bytes"), bytes):
            shown.update(body=body_text(body["bytes"]), body_kind="bytes (hex)")
    return shown


@dataclass
class SpanRow:
    """One bar of the waterfall; ``left`` and ``width`` are percents of the whole trace."""

    span_id: str
    name: str
    service: str
    depth: int
    start_ms: float
    duration_ms: float
    left: float
    width: float
    error: str = ""
    replayed: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)


def waterfall(spans: list[dict[str, Any]]) -> list[SpanRow]:
    """The spans as rows of a waterfall: children under their parent, in start order; a
    span whose parent is not among them (still running, or lost with a crashed process) is
    a root."""
    if not spans:
        return []
    known = {s["span_id"] for s in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    roots: list[dict[str, Any]] = []
    for s in sorted(spans, key=lambda s: (s["start_us"], s["end_us"])):
        if s.get("parent_id") in known:
            children.setdefault(s["parent_id"], []).append(s)
        else:
            roots.append(s)
    t0 = min(s["start_us"] for s in spans)
    total = max(max(s["end_us"] for s in spans) - t0, 1)
    rows: list[SpanRow] = []
    stack = [(r, 0) for r in reversed(roots)]
    while stack:
        s, depth = stack.pop()
        rows.append(_span_row(s, depth, t0, total))
        stack += [(kid, depth + 1) for kid in reversed(children.get(s["span_id"], []))]
    return rows


def _span_row(s: dict[str, Any], depth: int, t0: int, total: int) -> SpanRow:
    start, length = s["start_us"] - t0, max(s["end_us"] - s["start_us"], 0)
    events = s.get("events") or []
    return SpanRow(
        span_id=str(s["span_id"]),
        name=str(s["name"]),
        service=str(s.get("service", "")),
        depth=depth,
        start_ms=start / 1000,
        duration_ms=length / 1000,
        left=round(100 * start / total, 3),
        width=round(max(100 * length / total, 0.2), 3),
        error=str(s.get("status_description") or "error") if s.get("status") == "ERROR" else "",
        replayed=any(e.get("name") == "replay" for e in events),
        attributes=dict(s.get("attributes") or {}),
    )


def duration(created_at: str, ended_at: str = "") -> str:
    """How long a session took, from its RFC 3339 times ("": until now)."""
    start = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    end = datetime.fromisoformat(ended_at.replace("Z", "+00:00")) if ended_at else _now()
    seconds = max((end - start).total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


def _now() -> datetime:
    return timefmt.from_us(timefmt.now_us())


def utc_text(t_us: int) -> str:
    """A time as the UI shows it before its script puts it in the viewer's time zone."""
    return timefmt.from_us(t_us).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def iso(t_us: int) -> str:
    return timefmt.rfc3339(t_us)


def query_with(params: Any, **changed: str) -> str:
    """The query string of ``params`` with ``changed`` (empty values left out)."""
    merged = {k: v for k, v in params.items() if k not in changed}
    merged.update(changed)
    kept = {k: v for k, v in merged.items() if v}
    return f"?{urlencode(kept)}" if kept else ""


# The sessions page's "created within" choices: (value, label, seconds).
WITHIN = (
    ("15m", "the last 15 minutes", 15 * 60),
    ("1h", "the last hour", 3600),
    ("24h", "the last 24 hours", 86400),
    ("7d", "the last 7 days", 7 * 86400),
    ("30d", "the last 30 days", 30 * 86400),
)


def since(within: str) -> str:
    """The RFC 3339 time ``within`` (one of WITHIN's values) ago."""
    for value, _, seconds in WITHIN:
        if value == within:
            return timefmt.rfc3339(timefmt.now_us() - seconds * 1_000_000)
    choices = ", ".join(v for v, _, _ in WITHIN)
    raise InvalidArgument(f"created within {within!r}? Use one of {choices}")


def count(text: str) -> int:
    """A count from a query parameter (0 or more)."""
    try:
        number = max(int(text), 0)
    except ValueError:
        raise InvalidArgument(f"not a number: {text!r}") from None
    if number >= 2**62:
        raise InvalidArgument(f"{text!r} is too large")
    return number


def next_run(schedule: str) -> str:
    """When a schedule fires next (RFC 3339), or why never."""
    if not schedule:
        return ""
    try:
        return cron.parse(schedule).next_after(datetime.now(UTC)).isoformat()
    except cron.CronError as e:
        return f"never ({e})"
