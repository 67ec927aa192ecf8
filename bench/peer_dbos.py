"""DBOS's side of bench/peers.py, run on the peers' venv: DBOS is a library, so one process
is client, workflow executor and (SQLite) database at once.  Prints one JSON line of
results.  ``replay DB OUT`` is the second process of the replay measurement: it recovers
the pending workflow that the first one left behind."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dbos import DBOS


@DBOS.step()
def noop(i: int) -> int:
    return i


@DBOS.workflow()
def many(n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        noop(i)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


@DBOS.workflow()
def first_line() -> float:
    return time.time()


@DBOS.workflow()
def one_step() -> int:
    return noop(0)


@DBOS.workflow()
def sleeper(path: str) -> None:
    with open(path, "a") as f:  # the benchmark counts the sleepers that began
        f.write("x\n")
    DBOS.sleep(3600)


@DBOS.workflow()
def replay(n: int, out: str) -> None:
    """n steps, then a durable sleep in which the benchmark kills the process; the next
    process recovers the workflow and replays the n steps from the database."""
    with open(out, "a") as f:
        f.write(f"first {time.time()}\n")
    for i in range(n):
        noop(i)
    with open(out, "a") as f:
        f.write(f"live {time.time()}\n")
    DBOS.sleep(3600)


def launch(db: str) -> None:
    DBOS(
        config={
            "name": "ak-bench",
            "system_database_url": "sqlite:///" + db,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()


def main() -> None:
    import argparse
    import subprocess
    import tempfile
    from importlib.metadata import version

    sys.path.insert(0, str(Path(__file__).parent))
    import peerlib as pl

    pl.exit_on_sigterm()

    ap = argparse.ArgumentParser()
    pl.add_workload_options(ap)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ak-bench-dbos-"))
    res: dict[str, Any] = {"versions": {"dbos": version("dbos")}}
    metrics = pl.Metrics("dbos")
    res["metrics"] = metrics
    procs = pl.Procs(work)
    try:
        pl.log("dbos: replay of a 1,000-step workflow after a kill (two processes)")
        out, db = work / "replay.out", str(work / "replay.sqlite")
        first = procs.spawn("dbos-1", [sys.executable, __file__, "start-replay", db, str(out)])
        pl.wait_until(lambda: "live" in (out.read_text() if out.exists() else ""), "the steps")
        procs.stop(first, grace=0)
        second = procs.spawn("dbos-2", [sys.executable, __file__, "recover", db])
        pl.wait_until(lambda: out.read_text().count("live") >= 2, "the recovery", 120)
        procs.stop(second, grace=0)
        rec = [line.split() for line in out.read_text().splitlines()]
        firsts = [float(t) for k, t in rec if k == "first"]
        lives = [float(t) for k, t in rec if k == "live"]
        metrics["replay_ms"] = (lives[1] - firsts[1]) * 1000

        pl.log("dbos: starting (SQLite system database, in this process)")
        launch(str(work / "dbos.sqlite"))
        many(10)
        pl.log(f"dbos: {args.steps} sequential steps in one workflow")
        times = many(args.steps)
        metrics["step_p50_ms"] = pl.pct(times, 50) / 1000
        metrics["step_p99_ms"] = pl.pct(times, 99) / 1000

        pl.log(f"dbos: {args.starts} sequential workflows, time to the first line")
        lat = []
        for i in range(args.starts + 5):
            sent = time.time()
            t = DBOS.start_workflow(first_line).get_result()
            if i >= 5:
                lat.append((t - sent) * 1000)
        metrics["start_p50_ms"] = pl.pct(lat, 50)
        metrics["start_p99_ms"] = pl.pct(lat, 99)

        pl.log(f"dbos: closed loop, {args.concurrency} in flight, {args.duration:g} s")
        counts = {"ok": 0, "failed": 0}
        loop_lat: list[float] = []
        last = [0.0]
        lock = threading.Lock()
        stop_at = time.monotonic() + args.duration

        def caller() -> None:
            while time.monotonic() < stop_at:
                t = time.monotonic()
                try:
                    DBOS.start_workflow(one_step).get_result()
                except Exception:
                    with lock:
                        counts["failed"] += 1
                else:
                    with lock:
                        counts["ok"] += 1
                        last[0] = time.monotonic()
                        loop_lat.append((last[0] - t) * 1000)

        cpu0 = time.process_time()
        t0 = time.monotonic()
        callers = [threading.Thread(target=caller) for _ in range(args.concurrency)]
        for c in callers:
            c.start()
        for c in callers:
            c.join()
        cpu = (time.process_time() - cpu0) * 1000
        metrics["closed_rate"] = counts["ok"] / max(1e-9, last[0] - t0)
        metrics["closed_p99_ms"] = pl.pct(loop_lat, 99) if loop_lat else None
        metrics["closed_bad"] = counts["failed"]
        metrics["cpu_ms"] = cpu / max(1, counts["ok"])
        res["closed"] = counts

        count = 0
        for n in (int(x) for x in args.sleepers.split(",") if x):
            pl.log(f"dbos: {n} workflows in a durable sleep")
            seen = work / f"sleepers-{n}"
            time.sleep(1)
            before = pl.pss_kib([os.getpid()])
            for _ in range(n):
                DBOS.start_workflow(sleeper, str(seen))
            pl.wait_until(lambda s=seen, n=n: pl.lines_in(s) >= n, f"{n} sleepers", 120)
            time.sleep(3)
            after = pl.pss_kib([os.getpid()])
            metrics["mem50_mib" if count == 0 else "mem1000_mib"] = (after - before) / 1024 / n
            count += 1
    except BaseException:
        for name in ("dbos-1", "dbos-2"):
            print(f"--- {name} log:\n{procs.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
    print(json.dumps(res), flush=True)
    subprocess.run(["rm", "-rf", str(work)])
    os._exit(0)  # the sleepers' threads never end: DBOS.destroy() would wait for them


if __name__ == "__main__":
    if sys.argv[1:2] == ["start-replay"]:
        launch(sys.argv[2])
        DBOS.start_workflow(replay, 1000, sys.argv[3])
        threading.Event().wait()
    elif sys.argv[1:2] == ["recover"]:
        launch(sys.argv[2])  # recovers the pending workflow
        threading.Event().wait()
    else:
        try:
            main()
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(1)  # the sleepers' threads would keep the interpreter from exiting
