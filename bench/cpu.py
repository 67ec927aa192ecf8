"""CPU per workflow, process by process, in the peers' closed loop (bench/peers.py): a sync
webhook whose handler runs one activity and answers with ``http_outcome``, 64 in flight.

``python -m bench.cpu [--duration 20] [--concurrency 64] [--rounds 1]`` starts its own
``ak up --mode dev`` (as ``python -m bench --peers --only ours`` does), and prints the
workflows/s and, for each kind of process (ingress, dispatcher, runner, store, workers with
their fork server, nats-server, the load generator), its CPU per workflow (user and system
time from /proc, children it waited for included) and its minor page faults.
``--steps N``: per durable step instead, in one session of N sequential activities.
``--py-spy KIND...`` / ``--perf KIND...``: profiles of those processes (first round) in
``--out``; ``--env NAME=VALUE...``: settings for the stack (``AK_RUNNER__SANDBOX=off``).
Printed only: docs/benchmarks.md quotes it by hand.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import peerlib as pl  # noqa: E402


def kind(pid: int, root: int) -> str:
    """What a process of the stack is, from its command line."""
    if pid == root:
        return "ak up"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    text = b" ".join(argv).decode(errors="replace")
    if "nats-server" in text:
        return "nats-server"
    for name in ("ingress", "dispatcher", "runner", "store"):
        if f"-m ak_{name}" in text:
            return name
    return "worker"


def _is_busy_worker(pid: int) -> bool:
    """A worker that has run sessions (not a spare, nor the fork server: forked workers
    keep its command line)."""
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        forked = "_zygote" in Path(f"/proc/{ppid}/cmdline").read_text()
        started = "_zygote" not in Path(f"/proc/{pid}/cmdline").read_text()
        return (forked or started) and pl.cpu_ms([pid]) > 1
    except OSError:
        return False


Counts = tuple[float, float, float]  # user ms, system ms, minor page faults


def counts(pid: int) -> Counts:
    """User and system CPU (children waited for included) and minor faults of a process."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0, 0.0
    tick = 1000 / pl.CLK_TCK
    return (int(f[11]) + int(f[13])) * tick, (int(f[12]) + int(f[14])) * tick, float(f[7])


def per_process(root: int) -> dict[int, tuple[str, Counts]]:
    return {pid: (kind(pid, root), counts(pid)) for pid in pl.tree(root)}


def breakdown(
    before: dict[int, tuple[str, Counts]], after: dict[int, tuple[str, Counts]]
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for pid, (k, now) in after.items():
        then = before.get(pid, (k, (0.0, 0.0, 0.0)))[1]
        for i in range(3):
            out[k][i] += now[i] - then[i]
    return out


def profilers(
    before: dict[int, tuple[str, Counts]], args: argparse.Namespace
) -> tuple[list[subprocess.Popen[bytes]], subprocess.Popen[bytes] | None]:
    """py-spy and perf on the processes asked for, for ``args.duration`` (first round only)."""
    spies = [  # py-spy on at most 8 processes
        subprocess.Popen(
            [
                shutil.which("py-spy") or "py-spy",
                "record",
                "-p",
                str(pid),
                "-d",
                str(int(args.duration)),
                "-f",
                "raw",
                "-r",
                "1000",
                "--nonblocking",
                "-o",
                f"{args.out}/py-spy-{k}-{pid}.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(f"{args.out}/py-spy-{k}-{pid}.log", "wb"),  # noqa: SIM115
        )
        for pid, k in [
            (pid, k)
            for pid, (k, _) in before.items()
            if k in args.py_spy and (k != "worker" or _is_busy_worker(pid))
        ][:8]
    ]
    args.py_spy = []
    perf = None
    if args.perf:
        pids = [pid for pid, (k, _) in before.items() if k in args.perf]
        perf = subprocess.Popen(
            [
                "perf",
                "record",
                "-F",
                "999",
                "-g",
                "-o",
                f"{args.out}/perf.data",
                "-p",
                ",".join(map(str, pids)),
                "--",
                "sleep",
                str(int(args.duration)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return spies, perf


def show(parts: dict[str, list[float]], n: int) -> None:
    print("  process          CPU ms  (user + system)  minor faults")
    for k, (user, system, faults) in sorted(parts.items(), key=lambda kv: -sum(kv[1][:2])):
        print(
            f"  {k:15s} {(user + system) / n:6.3f}  ({user / n:.3f} + {system / n:.3f})"
            f"  {faults / n:8.1f}"
        )


def main(argv: list[str] | None = None) -> None:
    from bench import __main__ as b
    from tests.helpers import start_stack

    ap = argparse.ArgumentParser(prog="python -m bench.cpu")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--steps", type=int, default=0, help="instead: one session of this many activities"
    )
    ap.add_argument(
        "--py-spy",
        nargs="*",
        default=[],
        metavar="KIND",
        help="record these kinds of process (runner, store, ...) with py-spy in the first round",
    )
    ap.add_argument("--perf", nargs="*", default=[], metavar="KIND", help="perf record these")
    ap.add_argument("--out", default="/tmp", help="where py-spy's profiles go")
    ap.add_argument("--env", nargs="*", default=[], help="NAME=VALUE for the stack")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)

    home = Path(tempfile.mkdtemp(prefix="ak-bench-cpu-"))
    env = {"AK_JOBS__ACK_WAIT": "2", "AK_LOG_LEVEL": "WARNING"}
    env.update(dict(e.split("=", 1) for e in args.env))
    stack = start_stack(home, env)
    os.environ["AK_HTTP__SERVICE_URL"] = stack.url
    os.environ["AK_TOKEN"] = stack.token
    try:
        paths = stack.deploy_paths(b.PROJECT)
        url = stack.url + paths["sync_step"]
        pl.closed_loop(url, {}, 8, 1)  # warm up: workers started
        for _ in range(args.rounds):
            load = os.getloadavg()[0]
            if args.steps:
                before = per_process(stack.proc.pid)
                spies, perf = profilers(before, args)
                sid = b.run_session(stack, paths["activities"], {"n": args.steps})
                times = b.prints(sid)[0]["us"]
                parts = breakdown(before, per_process(stack.proc.pid))
                for spy in spies:  # (recording for --duration: stopped when the session ends)
                    spy.send_signal(signal.SIGINT)  # (py-spy writes its profile then)
                    spy.wait()
                if perf is not None:
                    perf.wait()
                    args.perf = []
                n = args.steps
                total = sum(p[0] + p[1] for p in parts.values()) / n
                print(
                    f"{n} activities: p50 {b.pct(times, 50) / 1000:.3f} ms, "
                    f"CPU {total:.3f} ms per step, load before {load:.2f}"
                )
                show(parts, n)
                continue
            before = per_process(stack.proc.pid)
            spies, perf = profilers(before, args)
            loop = pl.closed_loop(url, {}, args.concurrency, args.duration)
            parts = breakdown(before, per_process(stack.proc.pid))
            for spy in spies:
                spy.wait()
            if perf is not None:
                perf.wait()
                args.perf = []
            after = per_process(stack.proc.pid)
            old = {p for p, (k, _) in before.items() if k == "worker"}
            new = {p for p, (k, _) in after.items() if k == "worker"}
            print(f"worker processes: {len(old)} before, {len(new)} after, {len(new - old)} new")
            parts["load generator"] = [loop["client_cpu_ms"], 0.0, 0.0]
            n = max(1, loop["ok"])
            total = sum(p[0] + p[1] for p in parts.values()) / n
            print(
                f"{loop['rate']:.0f} workflows/s, p99 {loop['p99_ms']:.0f} ms, "
                f"failed+lost {loop['failed'] + loop['lost']}, CPU {total:.2f} ms/workflow, "
                f"load before {load:.2f}"
            )
            show(parts, n)
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
