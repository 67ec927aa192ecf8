"""Wall time of `ak` commands, start-up included, against a fresh `ak up --mode dev` stack.

Usage: ``python -m bench.cli [--runs 20] [--deploys 5]``, or ``python -m bench --only cli``
(then the numbers go to docs/benchmarks.md with the others). Each command runs as a user
runs it: a new process of the installed ``ak`` script, with the stack's config home (its
credentials file holds the API token). The baselines say what no CLI change can remove:
the interpreter starting, and typer importing.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import AK, Stack, start_stack  # noqa: E402

PROJECT = Path(__file__).parent / "project"
SESSIONS = 20  # sessions the project has when `ak session list` runs
Result = dict[str, float]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def _children_cpu_ms() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * 1000


def run_ms(argv: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Milliseconds from spawning ``argv`` to its exit, and of CPU it used (user and
    system: what a busy machine inflates less), once per run; fails on an error."""
    walls, cpus = [], []
    for _ in range(runs):
        c0, t0 = _children_cpu_ms(), time.perf_counter()
        res = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=PROJECT)
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append(_children_cpu_ms() - c0)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr}")
    return walls, cpus


def commands() -> dict[str, list[str]]:
    """What is timed, by the name the results use."""
    py = sys.executable
    return {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import typer'": [py, "-c", "import typer"],
        "ak version": [AK, "version"],
        "ak session list -p bench": [AK, "session", "list", "-p", "bench"],
        "ak session list": [AK, "session", "list"],
        "ak project list": [AK, "project", "list"],
        "ak --help": [AK, "--help"],
    }


def bench_cli(stack: Stack, paths: dict[str, str], runs: int = 20, deploys: int = 5) -> Result:
    """Each command's wall time, p50 and p90, and CPU time, p50 (ms), with ``SESSIONS``
    sessions in the project."""
    if "trivial" in paths:
        for i in range(SESSIONS):
            stack.session_of("bench", stack.post_json(paths["trivial"], {"i": i})[1])
    out: Result = {}
    for name, argv in commands().items():
        run_ms(argv, stack.env, 2)  # the page cache and .pyc files warm
        walls, cpus = run_ms(argv, stack.env, runs)
        out[f"{name}: wall p50 (ms)"] = pct(walls, 50)
        out[f"{name}: wall p90 (ms)"] = pct(walls, 90)
        out[f"{name}: CPU p50 (ms)"] = pct(cpus, 50)
    if deploys:
        # `ak deploy` waits for the build, polling every 0.5 s: most of it is the server's.
        walls, cpus = run_ms([AK, "deploy"], stack.env, deploys)
        out["ak deploy: wall p50 (ms)"] = pct(walls, 50)
        out["ak deploy: CPU p50 (ms)"] = pct(cpus, 50)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.cli")
    ap.add_argument("--runs", type=int, default=20, help="runs of each command")
    ap.add_argument("--deploys", type=int, default=5, help="runs of `ak deploy` (0: none)")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ak-bench-cli-"))
    stack = start_stack(home, {"AK_LOG_LEVEL": "WARNING"})
    try:
        paths = stack.deploy_paths(PROJECT)
        result = bench_cli(stack, paths, args.runs, args.deploys)
    finally:
        stack.stop()
    print(f"| command ({args.runs} runs) | ms |\n|---|---|")
    for key, value in result.items():
        print(f"| {key.removesuffix(' (ms)')} | {value:.0f} |")


if __name__ == "__main__":
    main()
