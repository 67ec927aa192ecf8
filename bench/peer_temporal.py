"""Temporal's side of bench/peers.py, run on the peers' venv: starts `temporal server
start-dev` and a worker, runs the workloads as the client and prints one JSON line of
results."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow

QUEUE = "bench"
TIMEOUT = timedelta(seconds=60)


@activity.defn
async def noop(i: int) -> int:
    return i


@workflow.defn
class Many:
    """n trivial activities (or local activities), each timed (microseconds)."""

    @workflow.run
    async def run(self, n: int, local: bool) -> list[float]:
        out = []
        for i in range(n):
            with workflow.unsafe.sandbox_unrestricted():
                t0 = time.perf_counter_ns()
            if local:
                await workflow.execute_local_activity(noop, i, start_to_close_timeout=TIMEOUT)
            else:
                await workflow.execute_activity(noop, i, start_to_close_timeout=TIMEOUT)
            with workflow.unsafe.sandbox_unrestricted():
                out.append((time.perf_counter_ns() - t0) / 1000)
        return out


@workflow.defn
class FirstLine:
    @workflow.run
    async def run(self) -> float:
        with workflow.unsafe.sandbox_unrestricted():
            return time.time()


@workflow.defn
class OneStep:
    @workflow.run
    async def run(self) -> int:
        return int(await workflow.execute_activity(noop, 0, start_to_close_timeout=TIMEOUT))


@workflow.defn
class Sleeper:
    @workflow.run
    async def run(self, path: str) -> None:
        if not workflow.unsafe.is_replaying():
            with workflow.unsafe.sandbox_unrestricted(), open(path, "a") as f:
                f.write("x\n")  # the benchmark counts the sleepers that began
        await asyncio.sleep(3600)


WORKFLOWS = [Many, FirstLine, OneStep, Sleeper]
WORKER = "import asyncio, sys, peer_temporal as m; asyncio.run(m.worker(sys.argv[1]))"


async def connect(address: str) -> Any:
    """A client, once the dev server's frontend is healthy (its port opens before)."""
    from temporalio.client import Client

    deadline = time.monotonic() + 120
    while True:
        try:
            return await Client.connect(address)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def worker(address: str) -> None:
    from temporalio.worker import Worker

    client = await connect(address)
    await Worker(client, task_queue=QUEUE, workflows=WORKFLOWS, activities=[noop]).run()


def main() -> None:
    import argparse
    import json
    import subprocess
    import tempfile
    import uuid
    from importlib.metadata import version

    from temporalio.worker import Replayer

    sys.path.insert(0, str(Path(__file__).parent))
    import peerlib as pl

    pl.exit_on_sigterm()

    ap = argparse.ArgumentParser()
    pl.add_workload_options(ap)
    ap.add_argument("--in-memory", action="store_true", help="start-dev's default store")
    args = ap.parse_args()

    temporal = str(Path(sys.executable).with_name("temporal"))
    cli_version = subprocess.run([temporal, "--version"], capture_output=True, text=True).stdout
    server_version = (
        cli_version.split("Server ")[1].split(",")[0] if "Server " in cli_version else "?"
    )
    res: dict[str, Any] = {
        "versions": {
            "temporal CLI": cli_version.split()[2],
            "server": server_version,
            "temporalio": version("temporalio"),
        }
    }
    metrics = pl.Metrics("temporal")
    res["metrics"] = metrics
    res["store"] = "memory" if args.in_memory else "file"
    work = Path(tempfile.mkdtemp(prefix="ak-bench-temporal-"))
    procs = pl.Procs(work)
    port = pl.free_port()
    address = f"127.0.0.1:{port}"

    async def workloads() -> None:
        client = await connect(address)

        def run_id() -> str:
            return f"b-{uuid.uuid4().hex}"

        def system() -> list[int]:
            return pl.tree(server.pid, wrk.pid)

        await client.execute_workflow(Many.run, args=[10, False], id=run_id(), task_queue=QUEUE)
        for local in (False, True):
            what = "local activities" if local else "activities"
            pl.log(f"temporal: {args.steps} sequential {what} in one workflow")
            wid = run_id()
            times = await client.execute_workflow(
                Many.run, args=[args.steps, local], id=wid, task_queue=QUEUE
            )
            suffix = "_local" if local else ""
            metrics[f"step{suffix}_p50_ms"] = pl.pct(times, 50) / 1000
            metrics[f"step{suffix}_p99_ms"] = pl.pct(times, 99) / 1000
            if not local:
                history_id = wid

        pl.log("temporal: replay of that 1,000-activity history (Replayer)")
        t0 = time.perf_counter()
        history = await client.get_workflow_handle(history_id).fetch_history()
        res["history_fetch_ms"] = (time.perf_counter() - t0) * 1000
        import peer_temporal  # the workflows by a module name the sandbox can import

        replayer = Replayer(workflows=peer_temporal.WORKFLOWS)
        for key in ("replay_cold_ms", "replay_ms"):  # a fresh Replayer, then a warm one
            t0 = time.perf_counter()
            await replayer.replay_workflow(history)
            res[key] = (time.perf_counter() - t0) * 1000
        metrics["replay_ms"] = res.pop("replay_ms")

        pl.log(f"temporal: {args.starts} sequential workflows, time to the first line")
        lat = []
        for i in range(args.starts + 5):
            sent = time.time()
            first = await client.execute_workflow(FirstLine.run, id=run_id(), task_queue=QUEUE)
            if i >= 5:
                lat.append((first - sent) * 1000)
        metrics["start_p50_ms"] = pl.pct(lat, 50)
        metrics["start_p99_ms"] = pl.pct(lat, 99)

        pl.log(f"temporal: closed loop, {args.concurrency} in flight, {args.duration:g} s")
        counts = {"ok": 0, "failed": 0, "lost": 0}
        loop_lat: list[float] = []
        last = [0.0]

        async def caller(stop_at: float) -> None:
            while time.monotonic() < stop_at:
                t = time.monotonic()
                try:
                    await asyncio.wait_for(
                        client.execute_workflow(OneStep.run, id=run_id(), task_queue=QUEUE), 30
                    )
                except TimeoutError:
                    counts["lost"] += 1
                except Exception:
                    counts["failed"] += 1
                else:
                    counts["ok"] += 1
                    last[0] = time.monotonic()
                    loop_lat.append((last[0] - t) * 1000)

        cpu0, own0 = pl.cpu_ms(system()), time.process_time()
        t0 = time.monotonic()
        await asyncio.gather(*(caller(t0 + args.duration) for _ in range(args.concurrency)))
        cpu = pl.cpu_ms(system()) - cpu0 + (time.process_time() - own0) * 1000
        metrics["closed_rate"] = counts["ok"] / max(1e-9, last[0] - t0)
        metrics["closed_p99_ms"] = pl.pct(loop_lat, 99) if loop_lat else None
        metrics["closed_bad"] = counts["failed"] + counts["lost"]
        metrics["cpu_ms"] = cpu / max(1, counts["ok"])
        res["closed"] = {**counts, "p50_ms": pl.pct(loop_lat, 50) if loop_lat else None}

        count = 0
        for n in (int(x) for x in args.sleepers.split(",") if x):
            pl.log(f"temporal: {n} workflows in a durable sleep")
            seen = work / f"sleepers-{n}"
            await asyncio.sleep(1)
            before = pl.pss_kib(system())
            sem = asyncio.Semaphore(64)

            async def start(sem: asyncio.Semaphore = sem, seen: Path = seen) -> None:
                async with sem:
                    await client.start_workflow(
                        Sleeper.run, str(seen), id=run_id(), task_queue=QUEUE
                    )

            await asyncio.gather(*(start() for _ in range(n)))
            deadline = time.monotonic() + 180
            while pl.lines_in(seen) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {pl.lines_in(seen)} of {n} sleepers began")
                await asyncio.sleep(0.1)
            await asyncio.sleep(3)
            after = pl.pss_kib(system())
            metrics["mem50_mib" if count == 0 else "mem1000_mib"] = (after - before) / 1024 / n
            count += 1

    try:
        pl.log(f"temporal: starting temporal server start-dev {server_version} (SQLite in {work})")
        server = procs.spawn(
            "temporal-server",
            [
                temporal,
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(port),
                *([] if args.in_memory else ["--db-filename", str(work / "temporal.db")]),
                "--log-level",
                "warn",
            ],
        )
        pl.wait_until(lambda: pl.port_open(port), "the Temporal server", 120)
        wrk = procs.spawn(
            "temporal-worker",
            [sys.executable, "-c", WORKER, address],
            cwd=str(Path(__file__).parent),
        )
        asyncio.run(workloads())
    except BaseException:
        for name in ("temporal-server", "temporal-worker"):
            print(f"--- {name} log:\n{procs.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        subprocess.run(["rm", "-rf", str(work)])
    print(json.dumps(res))


if __name__ == "__main__":
    main()
