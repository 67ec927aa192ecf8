"""Where the time between a webhook and its handler's first line goes:
``python -m bench.startpath [--starts 200] [--runs 3]``.

Runs ``bench_webhook``'s sequential starts on a fresh `ak up --mode dev` stack, then reads
each session's trace and journal and splits its start into stages by the timestamps the
services recorded (every service is on this machine: one clock):

- ``ingress``: the request sent to the event journaled and answered (the webhook span's end);
- ``to dispatcher``: from there to the dispatch span's start (JetStream delivering the event);
- ``dispatcher: to created``: to its `created` record's time (finding the trigger's targets,
  making the job);
- ``dispatcher: created+job``: from there to the dispatch span's end (both published and
  acknowledged: since both go at once, the job may already be on its way to a runner);
- ``to runner``: the dispatch span's end to the session span's start (delivering the job);
- ``runner: to first line``: the session span's start to the handler's first line (the
  worker taken and told to start, the handler's module called);
and, beside the chain, ``started made after first line``: when the runner made its
`started` record (after looking up `created`), from the first line: the handler does not
wait for it, only its first step does.
Prints the p50 of each stage per run and of the total.

``--against CHECKOUT`` compares instead: a second stack from another checkout of this
repository (its ``.venv``: ``ak`` and the workers' Python), both up at once, one webhook
to each in turn (the order swapped every round), so that both see the same load on a
shared machine; prints each one's p50 and p99 of webhook to first line per run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ak_cli import client  # noqa: E402

import tests.helpers  # noqa: E402
from bench import __main__ as b  # noqa: E402
from tests.helpers import Stack, start_stack  # noqa: E402

ENV = {"AK_JOBS__ACK_WAIT": "2", "AK_LOG_LEVEL": "WARNING"}

STAGES = [
    "ingress",
    "to dispatcher",
    "dispatcher: to created",
    "dispatcher: created+job",
    "to runner",
    "runner: to first line",
    "total",
    "started made after first line",
]


def starts(stack: Any, paths: dict[str, str], n: int) -> list[tuple[str, float, float]]:
    """n sequential webhooks: (event id, sent, first line) in epoch seconds."""
    out_dir = Path(tempfile.mkdtemp())
    out_dir.chmod(0o777)
    out = out_dir / "t"
    found = []
    for _ in range(n):
        out.unlink(missing_ok=True)
        sent = time.time()
        eid = b.fire(stack, paths["first_line"], {"out": str(out)})
        deadline = time.monotonic() + 30
        while not out.exists() or not out.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the handler did not run")
            time.sleep(0.0005)
        found.append((eid, sent, float(out.read_text())))
    return found


def stages(eid: str, sent: float, first: float) -> dict[str, float] | None:
    sid = b.session_of(eid)
    recs = {r["kind"]: r for r in client.records(sid, kinds=["created", "started"])}
    spans = b.api("session.trace", session=sid)["spans"]
    by = {s["name"].split(" ")[0]: s for s in spans}
    hook, disp, ses = by.get("POST"), by.get("dispatch"), by.get("session")
    if not (hook and disp and ses and "created" in recs and "started" in recs):
        return None
    us = 1e6
    t = [
        sent * us,
        hook["end_us"],
        disp["start_us"],
        recs["created"]["t_us"],
        disp["end_us"],
        ses["start_us"],
        first * us,
    ]
    chain = STAGES[:-2]
    out = {name: (t[i + 1] - t[i]) / 1000 for i, name in enumerate(chain)}
    out["total"] = (t[-1] - t[0]) / 1000
    out["started made after first line"] = (recs["started"]["t_us"] - first * us) / 1000
    return out


class Starter:
    """Sequential webhooks to one stack's `first_line` handler, over a connection of its
    own; ``once`` is the time from sending one to its handler's first line, in ms."""

    def __init__(self, stack: Stack, paths: dict[str, str]) -> None:
        self.stack, self.path = stack, paths["first_line"]
        self.host, _, port = stack.url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.conn: http.client.HTTPConnection | None = None
        where = Path(tempfile.mkdtemp())
        where.chmod(0o777)  # the handler writes there (as its own user in the sandbox)
        self.out = where / "t"

    def once(self) -> float:
        self.out.unlink(missing_ok=True)
        body = json.dumps({"out": str(self.out)})
        for attempt in (1, 2):  # the server closes idle connections: a stale one is retried
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            sent = time.time()
            try:
                self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                resp.read()
                break
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        if resp.status != 202:
            raise RuntimeError(f"webhook answered {resp.status}")
        deadline = time.monotonic() + 30
        while not self.out.exists() or not self.out.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the handler did not run")
            time.sleep(0.0005)
        return (float(self.out.read_text()) - sent) * 1000


def _deployed(stack: Stack) -> dict[str, str]:
    os.environ["AK_HTTP__SERVICE_URL"] = stack.url
    os.environ["AK_TOKEN"] = stack.token
    return stack.deploy_paths(b.PROJECT)


def against(other: Path, runs: int, n: int) -> None:
    venv = other.resolve() / ".venv" / "bin"
    ours_ak = tests.helpers.AK
    stacks: dict[str, Stack] = {}
    try:
        tests.helpers.AK = str(venv / "ak")
        home = Path(tempfile.mkdtemp(prefix="ak-bench-start-other-"))
        stacks[str(other)] = start_stack(home, {**ENV, "AK_WORKER_PYTHON": str(venv / "python")})
        tests.helpers.AK = ours_ak
        home = Path(tempfile.mkdtemp(prefix="ak-bench-start-"))
        stacks["this checkout"] = start_stack(home, ENV)
        starters = {name: Starter(st, _deployed(st)) for name, st in stacks.items()}
        for _ in range(30):  # warm up: spare workers, caches
            for s in starters.values():
                s.once()
        time.sleep(6)  # past InboxWatch.SKEW: a fresh session need not look at its inbox
        for run in range(runs):
            lat: dict[str, list[float]] = {name: [] for name in starters}
            for i in range(n):
                order = list(starters) if i % 2 == 0 else list(reversed(starters))
                for name in order:
                    lat[name].append(starters[name].once())
            print(f"run {run + 1}, load {os.getloadavg()[0]:.2f}:")
            for name, vals in lat.items():
                print(
                    f"  {name:40s} p50 {statistics.median(vals):7.3f} ms"
                    f"  p99 {b.pct(vals, 99):7.3f} ms"
                )
    finally:
        tests.helpers.AK = ours_ak
        for st in stacks.values():
            st.stop()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.startpath")
    ap.add_argument("--starts", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", type=Path, help="another checkout (with its .venv)")
    args = ap.parse_args()
    if args.against:
        against(args.against, args.runs, args.starts)
        return
    home = Path(tempfile.mkdtemp(prefix="ak-bench-start-"))
    stack = start_stack(home, ENV)
    try:
        paths = _deployed(stack)
        b.bench_webhook(stack, paths, n=20)  # warm up: spare workers, caches
        time.sleep(6)  # past InboxWatch.SKEW: a fresh session need not look at its inbox
        for run in range(args.runs):
            found = starts(stack, paths, args.starts)
            time.sleep(1.5)  # the services send their spans to the store in batches
            rows = [r for r in (stages(*f) for f in found) if r is not None]
            load = os.getloadavg()[0]
            print(f"run {run + 1}: {len(rows)} starts traced, load {load:.2f}")
            for name in STAGES:
                vals = [r[name] for r in rows]
                print(
                    f"  {name:40s} p50 {statistics.median(vals):7.3f} ms"
                    f"  p99 {b.pct(vals, 99):7.3f} ms"
                )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
