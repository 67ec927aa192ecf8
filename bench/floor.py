"""The floor under a durable step on this machine: what one step of ours cannot go below
whatever the services do, measured on the bare parts.

A live step is one JetStream write acknowledged after its flush to disk (``ak up`` runs its
nats-server with ``sync_interval: always``) plus a round trip over the worker's pipes. This
script times each part alone, with nothing of ours around it:

- ``fsync`` of a 300-byte append in the benchmark's temporary directory (the filesystem the
  benchmarks' stacks keep their data on);
- a JetStream publish of 300 bytes, sent and acknowledged one after the other by nats-py
  (the client the services use), on a bare nats-server with ``sync_interval: always`` and
  with the server's default, taking turns run by run;
- a round trip of a 64-byte message between an asyncio process and a child echoing it over
  two pipes (the runner and its worker, with no frame parsing).

``python -m bench.floor [--runs 3] [--count 3000] [--out FILE]`` prints the figures and writes
them to a section of docs/benchmarks.md and of docs/benchmarks-notes.md (which the next
``python -m bench`` copies into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
from akcore import natsserver

from bench import __main__ as bench
from bench import peerlib as pl

BEGIN = "<!-- bench.floor: begin (written by python -m bench.floor) -->"
END = "<!-- bench.floor: end -->"
WARMUP = 300
ECHO = (
    "import os\n"
    "while True:\n"
    "    b = os.read(0, 65536)\n"
    "    if not b:\n"
    "        break\n"
    "    os.write(1, b)\n"
)


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p90 in milliseconds, warm-up dropped."""
    kept = samples[WARMUP:]
    return pl.pct(kept, 50) * 1e3, pl.pct(kept, 90) * 1e3


def fsync_times(where: Path, count: int) -> list[float]:
    fd, path = tempfile.mkstemp(dir=where)
    try:
        out = []
        for _ in range(count):
            os.write(fd, b"x" * 300)
            t0 = time.perf_counter()
            os.fsync(fd)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        os.close(fd)
        os.unlink(path)


async def publish_times(where: Path, sync: str, count: int) -> list[float]:
    store = Path(tempfile.mkdtemp(prefix=f"floor-{sync}-", dir=where))
    proc, url = natsserver.start(store, sync=sync)
    try:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="FLOOR", subjects=["floor.>"])
        out = []
        for i in range(count):
            t0 = time.perf_counter()
            await js.publish(f"floor.{i % 64}", b"x" * 300)
            out.append(time.perf_counter() - t0)
        await nc.close()
        return out
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(store, ignore_errors=True)


async def pipe_times(count: int) -> list[float]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ECHO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    out = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            child.stdin.write(b"x" * 64)
            await child.stdin.drain()
            await child.stdout.readexactly(64)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        child.stdin.close()
        await child.wait()


def measure(runs: int, count: int, where: Path) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {}

    def keep(name: str, samples: list[float]) -> None:
        p50, p90 = percentiles(samples)
        print(f"{name}: p50 {p50:.3f} ms, p90 {p90:.3f} ms")
        results.setdefault(name, []).append((p50, p90))

    for i in range(runs):
        print(f"run {i + 1}")
        keep("fsync of a 300-byte append", fsync_times(where, count))
        for sync in ("always", "default"):
            samples = asyncio.run(publish_times(where, sync, count))
            keep(f"JetStream publish, acknowledged, sync {sync}", samples)
        keep("pipe round trip to a child process", asyncio.run(pipe_times(count)))
    return results


def section(results: dict[str, list[tuple[float, float]]], command: str, where: Path) -> str:
    lines = [
        BEGIN,
        "## The floor under a durable step",
        "",
        "What one live step (one JetStream write flushed to disk, one round trip to the "
        "worker) cannot go below on this machine, each part timed alone with nothing of "
        f"ours around it (`bench/floor.py`; data in `{where}`).",
        "",
        f"Machine: {bench.machine()}  ",
        f"Command: `{command}` (from the repository root, `.venv` active)  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| part | p50, ms: median [min, max] of runs | p90, ms: median |",
        "|---|---|---|",
    ]
    for name, rows in results.items():
        p50s = [r[0] for r in rows]
        p90s = [r[1] for r in rows]
        lines.append(
            f"| {name} | {statistics.median(p50s):.3f} [{min(p50s):.3f}, {max(p50s):.3f}] "
            f"| {statistics.median(p90s):.3f} |"
        )
    always = statistics.median(
        r[0] for r in results["JetStream publish, acknowledged, sync always"]
    )
    pipe = statistics.median(r[0] for r in results["pipe round trip to a child process"])
    lines += [
        "",
        f"A step of ours cannot take less than about {always + pipe:.2f} ms at p50 here "
        "(the flushed publish and the pipe round trip), before any work of the runner, the "
        "worker or the services beside them.",
    ]
    return "\n".join([*lines, "", END])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.floor")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=3000, help="samples per part and run")
    ap.add_argument("--out", default=str(bench.ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    where = Path(tempfile.gettempdir())
    results = measure(args.runs, max(args.count, WARMUP + 100), where)
    command = " ".join(["python -m bench.floor", *sys.argv[1:]])
    text = section(results, command, where)
    out = Path(args.out)
    for path in (out.with_name("benchmarks-notes.md"), out):
        pl.put_section(path, text, BEGIN, END)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
