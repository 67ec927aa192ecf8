"""Restate's side of bench/peers.py.  Imported by hypercorn, this module is the service;
run as a script (on the peers' venv), it starts restate-server and hypercorn, registers
the service, runs the workloads and prints one JSON line of results."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import restate

svc = restate.Service("Bench")


def noop(i: int) -> int:
    return i


@svc.handler()
async def many(ctx: restate.Context, n: int) -> list[float]:
    """n trivial `ctx.run` steps, each timed (microseconds)."""
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        await ctx.run_typed("noop", noop, i=i)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


@svc.handler()
async def first_line(ctx: restate.Context, _: int) -> float:
    return time.time()


@svc.handler()
async def one_step(ctx: restate.Context, _: int) -> int:
    return await ctx.run_typed("noop", noop, i=0)


@svc.handler()
async def sleeper(ctx: restate.Context, path: str) -> None:
    with open(path, "a") as f:  # not journaled: the benchmark counts the sleepers that began
        f.write("x\n")
    await ctx.sleep(timedelta(hours=1))


@svc.handler()
async def replay(ctx: restate.Context, req: dict[str, Any]) -> None:
    """n steps; the first attempt then fails (a retryable error), so Restate runs the
    handler again, which replays the n steps from the journal."""
    out = Path(req["out"])
    with out.open("a") as f:
        f.write(f"first {time.time()}\n")
    for i in range(int(req["n"])):
        await ctx.run_typed("noop", noop, i=i)
    with out.open("a") as f:
        f.write(f"live {time.time()}\n")
    marker = Path(req["marker"])
    if not marker.exists():
        marker.touch()
        raise RuntimeError("once more, from the journal")


app = restate.app(services=[svc])


def main() -> None:
    import argparse
    import http.client
    import json
    import subprocess
    import sys
    import tempfile
    from importlib.metadata import version

    sys.path.insert(0, str(Path(__file__).parent))
    import peerlib as pl

    pl.exit_on_sigterm()

    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True, help="the restate-server binary")
    pl.add_workload_options(ap)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ak-bench-restate-"))
    procs = pl.Procs(work)
    ingress, admin, fabric, svc_port = (pl.free_port() for _ in range(4))
    server_version = subprocess.run(
        [args.server, "--version"], capture_output=True, text=True
    ).stdout.split()[-1]
    res: dict[str, Any] = {"versions": {"restate-server": server_version}}
    for pkg in ("restate-sdk", "hypercorn"):
        res["versions"][pkg] = version(pkg)
    metrics = pl.Metrics("restate")
    res["metrics"] = metrics

    def call(path: str, body: Any, timeout: float = 300) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", ingress, timeout=timeout)
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status >= 300:
            raise RuntimeError(f"restate answered {resp.status} to {path}: {data[:300]!r}")
        return json.loads(data) if data else None

    try:
        pl.log(f"restate: starting restate-server {server_version} (data in {work})")
        server = procs.spawn(
            "restate-server",
            [args.server, "--base-dir", str(work / "data"), "--no-logo"],
            env={
                "RESTATE_ADMIN__BIND_PORT": str(admin),
                "RESTATE_INGRESS__BIND_PORT": str(ingress),
                "RESTATE_BIND_PORT": str(fabric),
                "RESTATE_LOG_FILTER": "warn",
                "RESTATE_DISABLE_TELEMETRY": "true",
            },
        )
        hyper = procs.spawn(
            "hypercorn",
            [
                str(Path(sys.executable).with_name("hypercorn")),
                "peer_restate:app",
                "--bind",
                f"127.0.0.1:{svc_port}",
            ],
            cwd=str(Path(__file__).parent),
        )
        pl.wait_until(lambda: pl.http_ok("127.0.0.1", admin, "/health"), "restate's admin API")
        pl.wait_until(lambda: pl.port_open(svc_port), "hypercorn")
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
        conn.request(
            "POST",
            "/deployments",
            json.dumps({"uri": f"http://127.0.0.1:{svc_port}"}),
            {"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        if resp.status >= 300:
            raise RuntimeError(f"registering the service: {resp.status} {resp.read()[:300]!r}")
        resp.read()
        pl.wait_until(lambda: pl.http_ok("127.0.0.1", ingress, "/restate/health"), "ingress")

        def system() -> list[int]:
            return pl.tree(server.pid, hyper.pid)

        call("/Bench/many", 10)  # warm up
        pl.log(f"restate: {args.steps} sequential ctx.run steps")
        times = call("/Bench/many", args.steps)
        metrics["step_p50_ms"] = pl.pct(times, 50) / 1000
        metrics["step_p99_ms"] = pl.pct(times, 99) / 1000

        pl.log(f"restate: {args.starts} sequential calls, time to the handler's first line")
        lat = []
        for i in range(args.starts + 5):
            sent = time.time()
            first = call("/Bench/first_line", 0)
            if i >= 5:
                lat.append((first - sent) * 1000)
        metrics["start_p50_ms"] = pl.pct(lat, 50)
        metrics["start_p99_ms"] = pl.pct(lat, 99)

        pl.log(f"restate: closed loop, {args.concurrency} in flight, {args.duration:g} s")
        cpu0 = pl.cpu_ms(system())
        loop = pl.closed_loop(
            f"http://127.0.0.1:{ingress}/Bench/one_step", 0, args.concurrency, args.duration
        )
        cpu = pl.cpu_ms(system()) - cpu0 + loop["client_cpu_ms"]
        metrics["closed_rate"] = loop["rate"]
        metrics["closed_p99_ms"] = loop["p99_ms"]
        metrics["closed_bad"] = loop["failed"] + loop["lost"]
        metrics["cpu_ms"] = cpu / max(1, loop["ok"])
        res["closed"] = loop

        pl.log("restate: replay of a 1,000-step journal (the handler fails once after it)")
        out, marker = work / "replay.out", work / "replay.marker"
        call(
            "/Bench/replay/send",
            {"n": 1000, "out": str(out), "marker": str(marker)},
        )
        pl.wait_until(lambda: out.exists() and out.read_text().count("live") >= 2, "the retry")
        rec = [line.split() for line in out.read_text().splitlines()]
        firsts = [float(t) for k, t in rec if k == "first"]
        lives = [float(t) for k, t in rec if k == "live"]
        metrics["replay_ms"] = (lives[1] - firsts[1]) * 1000

        count = 0
        for n in (int(x) for x in args.sleepers.split(",") if x):
            pl.log(f"restate: {n} invocations in a durable sleep")
            seen = work / f"sleepers-{n}"
            time.sleep(1)
            before = pl.pss_kib(system())
            for _ in range(n):
                call("/Bench/sleeper/send", str(seen))
            pl.wait_until(lambda s=seen, n=n: pl.lines_in(s) >= n, f"{n} sleepers", 120)
            time.sleep(3)
            after = pl.pss_kib(system())
            key = "mem50_mib" if count == 0 else "mem1000_mib"
            metrics[key] = (after - before) / 1024 / n
            count += 1
    except BaseException:
        for name in ("restate-server", "hypercorn"):
            print(f"--- {name} log:\n{procs.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        subprocess.run(["rm", "-rf", str(work)])
    print(json.dumps(res))


if __name__ == "__main__":
    main()
