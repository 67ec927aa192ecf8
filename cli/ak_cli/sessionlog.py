"""How journal records read in ``ak session log``: JSON entries (``-j``) and text lines."""

from __future__ import annotations

from typing import Any

from akcore import timefmt

from .render import jsonable


def _entries(kind: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    if kind == "created":
        return [{"type": "state", "state": {"created": {}}}]
    if kind == "started":
        running = {"runner": data.get("runner", ""), "attempt": data.get("attempt", 1)}
        return [{"type": "state", "state": {"running": running}}]
    if kind == "print":
        return [{"type": "print", "print": {"text": data.get("text", "")}}]
    if kind == "activity":
        seq = data.get("step")
        spec = {"function": data.get("function", ""), "seq": seq, "digest": data.get("digest", "")}
        done: dict[str, Any] = {"seq": seq, "ok": bool(data.get("ok"))}
        if not data.get("ok"):
            done["error"] = data.get("error", "")
        return [
            {"type": "call_spec", "call_spec": spec},
            {"type": "call_attempt_complete", "call_attempt_complete": done},
        ]
    if kind == "sleep":
        deadline = timefmt.rfc3339(int(data.get("deadline_us", 0)))
        return [
            {
                "type": "sleep",
                "sleep": {
                    "seq": data.get("step"),
                    "seconds": data.get("seconds"),
                    "until": deadline,
                },
            }
        ]
    if kind == "parked":
        wakes_us = int(data.get("deadline_us") or 0)
        parked = {
            "seq": data.get("step"),
            "reason": data.get("reason", ""),
            "until": timefmt.rfc3339(wakes_us) if wakes_us else "",
        }
        return [{"type": "parked", "parked": parked}]
    if kind == "ended":
        detail = {k: data[k] for k in ("error", "traceback") if data.get(k)}
        return [{"type": "state", "state": {str(data.get("state", "ERROR")).lower(): detail}}]
    return [{"type": kind, kind: jsonable(data)}]


def log_entries(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``ak session log -j`` objects of one journal record (an activity gives two)."""
    t = timefmt.rfc3339(rec["t_us"])
    return [{"t": t, **e} for e in _entries(rec["kind"], rec["data"])]


def entry_text(e: dict[str, Any]) -> str:
    kind = e["type"]
    if kind == "state":
        ((state, detail),) = e["state"].items()
        text = f"State: {state.upper()}"
        if detail.get("error"):
            text += f" {detail['error']}"
        if detail.get("traceback"):
            text += f"\n{detail['traceback'].rstrip()}"
        if "attempt" in detail:
            text += f" (attempt {detail['attempt']}, runner {detail['runner']})"
        return text
    if kind == "print":
        return f"Print: {e['print']['text']}"
    if kind == "call_spec":
        return f"Call Spec: seq #{e['call_spec']['seq']}, {e['call_spec']['function']}"
    if kind == "call_attempt_complete":
        c = e["call_attempt_complete"]
        return f"Call Attempt Complete: seq #{c['seq']}, " + ("ok" if c["ok"] else c["error"])
    if kind == "sleep":
        s = e["sleep"]
        return f"Sleep: seq #{s['seq']}, {s['seconds']:g}s, until {s['until']}"
    if kind == "parked":
        p = e["parked"]
        until = f" until {p['until']}" if p["until"] else ""
        return f"Parked: seq #{p['seq']}, waiting for {p['reason']}{until}"
    return f"{kind}: {e.get(kind)}"
