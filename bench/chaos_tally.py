"""What a chaos soak measured, from what the harness saw (HTTP answers, faults), what the
system says (sessions, journal records) and what the activities did (the side-effect log).
Pure: no I/O, so the counting rules can be checked on their own."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ACTIVITIES = ("step_one", "step_two", "step_three")  # bench/chaos_project/soak.py
EXAMPLES = 5  # session ids kept per kind of failure


@dataclass(frozen=True)
class Effect:
    """One execution of an activity: a line of the side-effect log."""

    activity: str
    t: float  # time.time() as it started
    pid: int


def parse_effects(text: str) -> list[Effect]:
    """The lines 'session activity time pid' of one session's file; a torn last line (a
    worker killed mid-write) is skipped."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            found.append(Effect(parts[1], float(parts[2]), int(parts[3])))
    return found


def repeated(effects: list[Effect]) -> bool:
    """Whether some activity ran more than once (only then does its journal matter)."""
    names = [e.activity for e in effects]
    return len(names) != len(set(names))


def recorded_times(records: list[dict[str, Any]]) -> dict[str, float]:
    """Activity name -> when its earliest journal record was written (seconds): the ``t``
    of its call_spec / call_attempt_complete entries in ``ak session log -j``."""
    times: dict[str, float] = {}
    for r in records:
        if r["kind"] == "activity":
            name, t = str(r["data"].get("function", "")), r["t_us"] / 1e6
            times[name] = min(t, times.get(name, t))
    return times


def rerun_kinds(execs: list[Effect], recorded_at: float | None) -> tuple[int, int]:
    """(in-flight re-runs, finished activity run again) among one activity's executions.

    An execution that started after the activity's record was written ran an activity the
    journal already held: that must never happen. Executions that started before any record
    existed are the first one and re-runs of an activity in flight when its attempt died
    (at-least-once, allowed)."""
    after = sum(1 for e in execs if recorded_at is not None and e.t > recorded_at)
    before = len(execs) - after
    return max(0, before - 1), after


def interleaved(effects: list[Effect]) -> bool:
    """Whether the session's activities ran in one worker, then another, then the first
    again: two attempts running at once (one that resumed beside its successor)."""
    seen: list[int] = []
    for e in sorted(effects, key=lambda e: e.t):
        if not seen or seen[-1] != e.pid:
            if e.pid in seen:
                return True
            seen.append(e.pid)
    return False


@dataclass
class Tally:
    """The soak's figures; ``examples`` keeps a few session (or event) ids per failure."""

    answers: Counter[str] = field(default_factory=Counter)  # HTTP status or error -> count
    sessions: int = 0
    states: Counter[str] = field(default_factory=Counter)
    duplicated: int = 0  # events with more than one session
    lost: int = 0  # accepted events without a session
    stuck: int = 0  # sessions not ended
    unacknowledged_ran: int = 0  # sessions of requests that got no 202
    executions: int = 0
    in_flight_reruns: int = 0
    finished_reruns: int = 0
    finished_rerun_sessions: int = 0
    interleaved: int = 0
    missing_effects: int = 0  # COMPLETED sessions with an activity that never ran
    unlisted: int = 0  # sessions that ran activities but that the system does not list
    faults: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped_faults: int = 0
    drained: bool = True
    examples: dict[str, list[str]] = field(default_factory=dict)

    def example(self, kind: str, ref: str) -> None:
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES:
            kept.append(ref)

    def failures(self) -> dict[str, int]:
        """What must be zero in a correct system."""
        return {
            "lost": self.lost,
            "duplicated": self.duplicated,
            "stuck": self.stuck,
            "finished activity run again": self.finished_reruns,
            # (a session that ran, whose records never reached SQL: the store set them aside)
            "unlisted sessions that ran activities": self.unlisted,
        }

    def rows(self) -> list[tuple[str, str]]:
        accepted = self.answers.get("202", 0)
        sent = sum(self.answers.values())
        rows = [
            ("webhooks sent", f"{sent}"),
            ("accepted (202)", f"{accepted} ({100 * accepted / max(1, sent):.1f}%)"),
        ]
        rows += [(f"refused: {k}", f"{n}") for k, n in sorted(self.answers.items()) if k != "202"]
        rows += [
            ("sessions started", f"{self.sessions}"),
            *[(f"  {s.lower()}", f"{n}") for s, n in sorted(self.states.items())],
            ("duplicated (events with >1 session)", f"{self.duplicated}"),
            ("lost (202, no session)", f"{self.lost}"),
            ("stuck (never ended)", f"{self.stuck}"),
            ("sessions of requests without a 202", f"{self.unacknowledged_ran}"),
            ("activity executions", f"{self.executions}"),
            ("in-flight activity re-runs (allowed)", f"{self.in_flight_reruns}"),
            (
                "finished activity run again (must be 0)",
                f"{self.finished_reruns} in {self.finished_rerun_sessions} sessions",
            ),
            ("sessions run by two attempts at once", f"{self.interleaved}"),
            ("completed without an activity's effect", f"{self.missing_effects}"),
            ("unlisted sessions that ran activities", f"{self.unlisted}"),
        ]
        for (action, target), n in sorted(self.faults.items()):
            rows.append((f"{'kills' if action == 'kill' else 'freezes'}: {target}", f"{n}"))
        rows.append(("faults skipped (no victim to spare)", f"{self.skipped_faults}"))
        rows.append(("drained before the timeout", "yes" if self.drained else "no"))
        return rows

    def table(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        lines = [f"| {'':{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {k:{width}} | {v} |" for k, v in self.rows()]
        for kind, refs in self.examples.items():
            lines.append(f"{kind}: {', '.join(refs)}")
        return "\n".join(lines)


def tally(
    answers: list[tuple[str, str]],
    sessions: list[dict[str, Any]],
    effects: dict[str, list[Effect]],
    recorded: dict[str, dict[str, float]],
) -> Tally:
    """``answers``: (HTTP status or error name, event id) per request; ``sessions``: the
    project's sessions as ``session.list`` gives them; ``effects``: each session's
    executions; ``recorded``: activity record times of the sessions with repeats."""
    t = Tally(answers=Counter(status for status, _ in answers))
    accepted = {eid for status, eid in answers if status == "202"}
    t.sessions = len(sessions)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for s in sessions:
        by_event.setdefault(s["event_id"], []).append(s)
        t.states[s["state"]] += 1
        if s["state"] in ("CREATED", "RUNNING"):
            t.stuck += 1
            t.example("stuck", s["session_id"])
        elif s["state"] != "COMPLETED":  # the handlers never fail: say why this one ended
            t.example(s["state"].lower(), s["session_id"])
        if s["event_id"] not in accepted:
            t.unacknowledged_ran += 1
    for eid, group in by_event.items():
        if len(group) > 1:
            t.duplicated += 1
            t.example("duplicated", eid)
    for eid in sorted(accepted - by_event.keys()):
        t.lost += 1
        t.example("lost (event)", eid)
    for s in sessions:
        _count_effects(t, s, effects.get(s["session_id"], []), recorded)
    return t


def _count_effects(
    t: Tally, session: dict[str, Any], execs: list[Effect], recorded: dict[str, dict[str, float]]
) -> None:
    sid = session["session_id"]
    t.executions += len(execs)
    times = recorded.get(sid, {})
    again_here = 0
    for name in ACTIVITIES:
        mine = [e for e in execs if e.activity == name]
        if not mine and session["state"] == "COMPLETED":
            t.missing_effects += 1
            t.example("completed without an effect", sid)
        in_flight, again = rerun_kinds(mine, times.get(name))
        t.in_flight_reruns += in_flight
        again_here += again
    if again_here:
        t.finished_reruns += again_here
        t.finished_rerun_sessions += 1
        t.example("finished activity run again", sid)
    if interleaved(execs):
        t.interleaved += 1
        t.example("two attempts at once", sid)
