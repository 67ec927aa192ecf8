"""``ak session trace``: a session's spans as a tree with durations."""

from __future__ import annotations

from typing import Any


def _ms(us: int) -> str:
    return f"{us / 1000:.2f} ms" if us < 10_000_000 else f"{us / 1_000_000:.2f} s"


def _label(span: dict[str, Any], orphan: bool) -> str:
    attrs = span.get("attributes") or {}
    name = str(span["name"])
    if orphan:  # its parent never ended: a crashed attempt, or still running
        name += " (parent span not recorded)"
    if "ak.activity.seq" in attrs:
        name += f" #{attrs['ak.activity.seq']}"
    if span.get("status") == "ERROR":
        name += f" ! {span.get('status_description') or 'error'}"
    for ev in span.get("events") or []:
        if ev.get("name") == "replay":
            name += f" (attempt {ev['attributes'].get('ak.attempt')}, replayed)"
    return name


def render(spans: list[dict[str, Any]]) -> list[str]:
    """One line per span, children under their parent in start order. Columns: the tree,
    the service, the start relative to the first span, the duration. A span whose parent is
    not among them (still running, or lost with a crashed process) is shown as a root."""
    if not spans:
        return []
    ids = {s["span_id"] for s in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    roots = []
    for s in sorted(spans, key=lambda s: (s["start_us"], s["end_us"])):
        if s.get("parent_id") in ids:
            children.setdefault(s["parent_id"], []).append(s)
        else:
            roots.append(s)
    t0 = min(s["start_us"] for s in spans)
    rows: list[tuple[str, str, str, str]] = []

    def walk(span: dict[str, Any], lead: str, branch: str) -> None:
        rows.append(
            (
                lead + branch + _label(span, not branch and bool(span.get("parent_id"))),
                str(span.get("service", "")),
                f"+{_ms(span['start_us'] - t0)}",
                _ms(span["end_us"] - span["start_us"]),
            )
        )
        kids = children.get(span["span_id"], [])
        inner = lead + ("" if not branch else "    " if branch == "└── " else "│   ")
        for i, kid in enumerate(kids):
            walk(kid, inner, "└── " if i == len(kids) - 1 else "├── ")

    for root in roots:
        walk(root, "", "")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return [
        f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c.rjust(widths[2])}  {d}".rstrip()
        for a, b, c, d in rows
    ]
