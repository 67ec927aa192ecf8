"""What ``sync_interval: always`` costs: the activity and webhook benchmarks on two stacks,
one whose embedded nats-server flushes every write to disk before acknowledging it (what
``ak up`` runs) and one with the server's default (a flush every 2 minutes), taking turns
run by run. Writes a section of docs/benchmarks-notes.md.

Usage: ``python -m bench.fsync [--runs 3] [--only activity webhook] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import __main__ as bench
from bench import peerlib as pl
from tests.helpers import Stack, start_stack

MODES = ("default", "always")  # AK_NATS__SYNC
BEGIN = "<!-- bench.fsync: begin (written by python -m bench.fsync) -->"
END = "<!-- bench.fsync: end -->"


def use(stack: Stack) -> None:
    """Points the benchmark's requests at ``stack`` (its API calls read the service URL from
    the environment; its webhooks keep one connection per thread, to the last stack)."""
    os.environ["AK_HTTP__SERVICE_URL"] = stack.url
    os.environ["AK_TOKEN"] = stack.token
    conn = getattr(bench._conn, "c", None)
    if conn is not None:
        conn.close()
        bench._conn.c = None


def measure(runs: int, chosen: list[str]) -> dict[str, dict[str, list[bench.Result]]]:
    """Results per benchmark and mode, the modes taking turns within each run."""
    results: dict[str, dict[str, list[bench.Result]]] = {}
    stacks: dict[str, Stack] = {}
    try:
        for mode in MODES:
            home = Path(tempfile.mkdtemp(prefix=f"ak-bench-fsync-{mode}-"))
            env = {"AK_JOBS__ACK_WAIT": "2", "AK_LOG_LEVEL": "WARNING", "AK_NATS__SYNC": mode}
            stacks[mode] = start_stack(home, env)
        paths = {}
        for mode, stack in stacks.items():
            use(stack)
            paths[mode] = stack.deploy_paths(bench.PROJECT)
        for i in range(runs):
            for name in chosen:
                for mode, stack in stacks.items():
                    use(stack)
                    r = bench.BENCHMARKS[name][1](stack, paths[mode])
                    print(f"{name} {mode} run {i + 1}: " + _row(r))
                    results.setdefault(name, {}).setdefault(mode, []).append(r)
    finally:
        for stack in stacks.values():
            stack.stop()
    return results


def _row(r: bench.Result) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in r.items())


def section(results: dict[str, dict[str, list[bench.Result]]], command: str) -> str:
    lines = [
        BEGIN,
        "## What `sync_interval: always` costs",
        "",
        "`ak up` runs its embedded nats-server with `sync_interval: always` "
        "(`AK_NATS__SYNC`, [README](../README.md)): JetStream flushes each write to disk "
        "before acknowledging it, so a 202 survives an OS crash or a power cut on that "
        "machine, not only a crash of the server. Two stacks side by side, one with the "
        "setting and one with the server's default (a flush every 2 minutes), taking "
        "turns run by run.",
        "",
        f"Machine: {bench.machine()}  ",
        f"Command: `{command}` (from the repository root, `.venv` active)  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| benchmark | metric | default: median [min, max] | always: median [min, max] |",
        "|---|---|---|---|",
    ]
    for name, by_mode in results.items():
        for key in by_mode[MODES[0]][0]:
            cells = []
            for mode in MODES:
                vals = [r[key] for r in by_mode[mode]]
                cells.append(f"{statistics.median(vals):.3f} [{min(vals):.3f}, {max(vals):.3f}]")
            lines.append(f"| {name} | {key} | {cells[0]} | {cells[1]} |")
    return "\n".join([*lines, "", END])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.fsync")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=["activity", "webhook"])
    ap.add_argument("--out", default=str(bench.ROOT / "docs" / "benchmarks-notes.md"))
    args = ap.parse_args()
    results = measure(args.runs, args.only or ["activity", "webhook"])
    command = " ".join(["python -m bench.fsync", *sys.argv[1:]])
    pl.put_section(Path(args.out), section(results, command), BEGIN, END)


if __name__ == "__main__":
    main()
