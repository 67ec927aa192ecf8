"""CPU per workflow, process by process, in the peers' closed loop (bench/peers.py): a sync
webhook whose handler runs one activity and answers with ``http_outcome``, 64 in flight.

``python -m bench.cpu [--duration 20] [--concurrency 64] [--rounds 1]`` starts its own
``ak up --mode dev`` (as ``python -m bench --peers --only ours`` does), and prints the
workflows/s and, for each kind of process (ingress, dispatcher, runner, store, workers,
nats-server, the load generator), its CPU (user + system, from /proc) per workflow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


def per_process(root: int) -> dict[int, tuple[str, float]]:
    return {pid: (kind(pid, root), pl.cpu_ms([pid])) for pid in pl.tree(root)}


def breakdown(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for pid, (k, ms) in after.items():
        out[k] += ms - before.get(pid, (k, 0.0))[1]
    return out


def main(argv: list[str] | None = None) -> None:
    from bench import __main__ as b
    from tests.helpers import start_stack

    ap = argparse.ArgumentParser(prog="python -m bench.cpu")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--pause", action="store_true", help="print the pids and wait for Enter")
    ap.add_argument(
        "--py-spy",
        nargs="*",
        default=[],
        metavar="KIND",
        help="record these kinds of process (runner, store, ...) with py-spy in the first round",
    )
    ap.add_argument("--out", default="/tmp", help="where py-spy's profiles go")
    ap.add_argument("--env", nargs="*", default=[], help="NAME=VALUE for the stack")
    args = ap.parse_args(argv)

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
        if args.pause:
            for pid, (k, _) in sorted(per_process(stack.proc.pid).items()):
                print(pid, k)
            input("Enter to go on")
        for _ in range(args.rounds):
            load = os.getloadavg()[0]
            before = per_process(stack.proc.pid)
            spies = [
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
                        "200",
                        "--nonblocking",
                        "-o",
                        f"{args.out}/py-spy-{k}-{pid}.txt",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for pid, (k, _) in before.items()
                if k in args.py_spy
            ]
            args.py_spy = []
            loop = pl.closed_loop(url, {}, args.concurrency, args.duration)
            parts = breakdown(before, per_process(stack.proc.pid))
            for spy in spies:
                spy.wait()
            parts["load generator"] = loop["client_cpu_ms"]
            n = max(1, loop["ok"])
            total = sum(parts.values()) / n
            print(
                f"{loop['rate']:.0f} workflows/s, p99 {loop['p99_ms']:.0f} ms, "
                f"failed+lost {loop['failed'] + loop['lost']}, CPU {total:.2f} ms/workflow, "
                f"load before {load:.2f}"
            )
            for k, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
                print(f"  {k:15s} {ms / n:6.3f} ms")
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
