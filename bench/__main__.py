"""Runs every benchmark against a fresh `ak up --mode dev` stack and writes
docs/benchmarks.md.  Usage: ``python -m bench [--runs 3] [--duration 20] [--only NAME...]``;
``python -m bench --peers [--only ours restate temporal dbos]``: see bench/peers.py.
``python -m bench parked [N]``: memory with N sessions parked in a durable sleep (printed).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ak_cli import client  # noqa: E402

from bench.cli import bench_cli  # noqa: E402
from tests.helpers import Stack, start_stack  # noqa: E402

PROJECT = Path(__file__).parent / "project"
Result = dict[str, float]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


_conn = threading.local()


def fire(stack: Stack, path: str, body: dict[str, Any]) -> str:
    """POSTs JSON to a webhook over this thread's keep-alive connection; the event id."""
    for attempt in (1, 2):  # the server closes idle connections: a stale one is retried
        conn = getattr(_conn, "c", None)
        if conn is None:
            host, _, port = stack.url.removeprefix("http://").partition(":")
            conn = _conn.c = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            break
        except (OSError, http.client.HTTPException):
            conn.close()
            _conn.c = None
            if attempt == 2:
                raise RuntimeError("webhook request failed") from None
    if resp.status != 202:
        raise RuntimeError(f"webhook answered {resp.status}")
    return resp.getheader("autokitteh-event-id", "")


def api(op: str, **args: Any) -> Any:
    """One API call, in this process (the benchmarks must not time `ak` starting up)."""
    return client.call(op, **args)


def session_of(event_id: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in api("session.list", project="bench", event_id=event_id)["sessions"]:
            return str(s["session_id"])
        time.sleep(0.005)
    raise RuntimeError(f"no session for event {event_id}")


def completed_since(t0: float) -> list[dict[str, Any]]:
    """The project's COMPLETED sessions created at or after ``t0`` (epoch seconds)."""
    found, token = [], ""
    while True:
        page = api(
            "session.list", project="bench", state="COMPLETED", page_size=1000, page_token=token
        )
        for s in page["sessions"]:
            if _us(s["created_at"]) / 1e6 < t0:
                return found
            found.append(s)
        token = page["next_page_token"]
        if not token:
            return found


def prints(sid: str, wanted: int = 1, timeout: float = 120) -> list[Any]:
    """The session's JSON prints, once there are ``wanted`` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = list(client.records(sid, kinds=["print"]))
        found = [json.loads(r["data"]["text"]) for r in recs]
        if len(found) >= wanted:
            return found
        time.sleep(0.005)
    raise RuntimeError(f"session {sid} printed nothing")


def run_session(stack: Stack, path: str, body: dict[str, Any], timeout: float = 120) -> str:
    sid = session_of(fire(stack, path, body))
    state = stack.wait_session(sid, timeout=timeout)["state"]
    if state != "COMPLETED":
        raise RuntimeError(f"session {sid} ended {state}")
    return sid


# --- the benchmarks: each returns its numbers for one run


def bench_activity(stack: Stack, paths: dict[str, str], n: int = 1000) -> Result:
    """A handler calls a trivial activity n times; per-call time minus the same call without
    the system (measured here, in a plain loop)."""
    sid = run_session(stack, paths["activities"], {"n": n})
    times = prints(sid)[0]["us"]

    def noop(i: int) -> int:
        return i

    base = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        noop(i)
        base.append((time.perf_counter_ns() - t0) / 1000)
    b50 = statistics.median(base)
    return {
        "overhead p50 (ms)": (pct(times, 50) - b50) / 1000,
        "overhead p99 (ms)": (pct(times, 99) - b50) / 1000,
    }


def bench_sealing(stack: Stack, paths: dict[str, str], n: int = 20_000) -> Result:
    """What sealing adds to one activity record, in this process: the runner seals each
    record it writes (``journal.seal`` then ``wire.encode``) and a replay unseals it; per
    record, for a result of 16 bytes, 1 KiB and 64 KiB, against encoding it unsealed."""
    from akcore import journal, wire
    from akcore.datakey import Keyring
    from cryptography.fernet import Fernet

    keys = Keyring([Fernet.generate_key()])
    out: Result = {}
    for size, label in ((16, "16 B"), (1024, "1 KiB"), (64 * 1024, "64 KiB")):
        act = journal.Activity(step=1, function="noop", ok=True, result=os.urandom(size))
        rec = journal.record("ses_01m91znddsfzjv0ga7t4pzqvck", 7, act, 1)
        blob = journal.seal(rec, keys)
        count = max(200, n * 16 // max(16, size // 64))
        plain = _per_call_us(functools.partial(wire.encode, rec), count)
        sealed = _per_call_us(lambda r=rec: wire.encode(journal.seal(r, keys)), count)
        opened = _per_call_us(functools.partial(journal.unseal, blob, keys), count)
        out[f"seal, {label} result (us)"] = sealed - plain
        out[f"unseal, {label} result (us)"] = opened
    return out


def _per_call_us(fn: Callable[[], Any], n: int) -> float:
    """The median over 5 batches of ``n`` calls, in microseconds per call."""
    batches = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        batches.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(batches)


def bench_webhook(stack: Stack, paths: dict[str, str], n: int = 200) -> Result:
    """n sequential webhooks; time from sending the request to the handler's first line."""
    lat = []
    out_dir = Path(tempfile.mkdtemp())
    out_dir.chmod(0o777)  # the handler writes there (as its own user in the sandbox)
    out = out_dir / "t"
    for _ in range(n):
        out.unlink(missing_ok=True)
        sent = time.time()
        fire(stack, paths["first_line"], {"out": str(out)})
        deadline = time.monotonic() + 30
        while not out.exists() or not out.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the handler did not run")
            time.sleep(0.0005)
        lat.append((float(out.read_text()) - sent) * 1000)
    return {"p50 (ms)": pct(lat, 50), "p99 (ms)": pct(lat, 99)}


def bench_throughput(
    stack: Stack, paths: dict[str, str], duration: float = 20, rate: float = 600
) -> Result:
    """Trivial sessions offered at ``rate``/s for ``duration`` s by 8 senders; completed
    sessions per second, end-to-end p99, and acknowledged events without a completed session."""
    sent: dict[str, float] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + duration
    interval = 8 / rate

    def sender() -> None:
        next_at = time.monotonic()
        while time.monotonic() < stop_at:
            t = time.time()
            try:
                eid = fire(stack, paths["trivial"], {})
            except RuntimeError:
                continue
            with lock:
                sent[eid] = t
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(sender)
    deadline = time.monotonic() + 120
    done: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        listed = completed_since(min(sent.values()))
        done = {s["event_id"]: s for s in listed if s["event_id"] in sent}
        if len(done) == len(sent):
            break
        time.sleep(1)
    ends = [_us(s["updated_at"]) for s in done.values()]
    firsts = min(sent.values())
    e2e = [(_us(s["updated_at"]) / 1e6 - sent[e]) * 1000 for e, s in done.items()]
    return {
        "offered (/s)": len(sent) / duration,
        "completed (/s)": len(done) / max(1e-9, max(ends) / 1e6 - firsts),
        "e2e p99 (ms)": pct(e2e, 99),
        "lost": float(len(sent) - len(done)),
    }


def _us(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1e6


def bench_replay(stack: Stack, paths: dict[str, str], n: int = 1000) -> Result:
    """A session records n activities, the runner is killed, and the next attempt replays
    them: time from reading the journal to the first new step."""
    marker_dir = Path(tempfile.mkdtemp())
    marker_dir.chmod(0o755)  # the handler looks there (as its own user in the sandbox)
    marker = marker_dir / "go"
    sid = session_of(fire(stack, paths["replay"], {"n": n, "marker": str(marker)}))
    stack.wait_output('"live"', "session", "prints", sid, timeout=120)
    stack.kill_runner()
    deadline = time.monotonic() + 120
    while True:
        recs = list(client.records(sid))
        starts = [r for r in recs if r["kind"] == "started"]
        if len(starts) == 2 and recs[-1]["seq"] > starts[1]["seq"]:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the session did not come back")
        time.sleep(0.2)
    marker.touch()
    second = starts[1]
    after = next(r for r in recs if r["seq"] > second["seq"])
    read_ms = second["data"].get("read_us", 0) / 1000
    return {
        "journal read (ms)": read_ms,
        "records from chunks": second["data"].get("chunked", 0),
        "replay to live (ms)": (after["t_us"] - second["t_us"]) / 1000 + read_ms,
    }


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages counted once across the processes sharing them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [k for kid in map(int, kids.stdout.split()) for k in (kid, *_descendants(kid))]


def _runner_kib(stack: Stack) -> int:
    """The runner and its processes: workers, fork server, and the workers it forked."""
    total = 0
    for pid in stack.pids("runner"):
        for p in [pid, *_descendants(pid)]:
            try:
                total += _pss_kib(p)
            except OSError:
                pass
    return total


def bench_memory(stack: Stack, paths: dict[str, str], n: int = 50) -> Result:
    """n sessions waiting in a durable sleep; the runner's memory (PSS, workers included)
    before and after, per waiting session. The sessions are stopped afterwards (a runner
    keeps up to AK_RUNNER__MAX_WAITING of them, 200)."""
    time.sleep(2)
    before = _runner_kib(stack)
    sids = [session_of(fire(stack, paths["waits"], {})) for _ in range(n)]
    deadline = time.monotonic() + 60
    while True:
        running = api("session.list", project="bench", state="RUNNING", page_size=1000)["sessions"]
        if len({s["session_id"] for s in running} & set(sids)) == n:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all {n} waiting sessions are running after 60 s")
        time.sleep(0.5)
    time.sleep(2)
    after = _runner_kib(stack)
    for sid in sids:
        api("session.stop", session=sid, reason="benchmark over")
    return {
        "runner before (MiB)": before / 1024,
        "runner with waiting sessions (MiB)": after / 1024,
        "per waiting session (MiB)": (after - before) / 1024 / n,
    }


def _service_kib(stack: Stack, service: str) -> int:
    return sum(_pss_kib(pid) for pid in stack.pids(service))


def parked_count(stack: Stack) -> int:
    """How many sessions are in ``AK_PARKED`` now (read as the stack's dispatcher, whose
    password `ak up` keeps in its data home)."""
    import asyncio
    import re

    from akcore import bus, natsauth, subjects
    from nats.js.errors import NoKeysError

    found = re.search(r"(nats://\S+) \(embedded", stack.output())
    if found is None:
        raise RuntimeError("the stack's NATS URL is not in its output")
    users = Path(stack.env["XDG_DATA_HOME"]) / "autokitteh" / "nats-users"
    password = natsauth.read_password(users / "dispatcher.password")

    async def count() -> int:
        nc = await bus.connect(
            found.group(1),
            "bench",
            user="dispatcher",
            password=password,
            inbox_prefix=natsauth.inbox_prefix("dispatcher"),
        )
        try:
            kv = await nc.jetstream().key_value(subjects.BUCKET_PARKED)
            try:
                return len(await kv.keys())
            except NoKeysError:
                return 0
        finally:
            await nc.close()

    return asyncio.run(count())


def _others_kib(stack: Stack) -> dict[str, int]:
    """The processes of the system that ``bench_parked`` does not read apart."""
    out = {service: _service_kib(stack, service) for service in ("ingress", "store")}
    kids = subprocess.run(["pgrep", "-P", str(stack.proc.pid)], capture_output=True, text=True)
    for pid in map(int, kids.stdout.split()):
        try:
            if b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out["nats-server"] = _pss_kib(pid)
        except OSError:
            pass
    return out


def _system_kib(stack: Stack) -> int:
    """Every process of the system: `ak up`, NATS, each service and what they started."""
    total = 0
    for p in [stack.proc.pid, *_descendants(stack.proc.pid)]:
        try:
            total += _pss_kib(p)
        except OSError:
            pass
    return total


def bench_parked(n: int) -> Result:
    """``python -m bench parked [N]``: N sessions in an hour's durable sleep on one runner
    with parking on (AK_RUNNER__PARK_AFTER=1): the memory of the runner (PSS, workers
    included) and of the dispatcher (its waker holds the parked sessions) before and once
    every one has parked. A stack of its own (parking is off in the other benchmarks)."""
    home = Path(tempfile.mkdtemp(prefix="ak-bench-parked-"))
    env = {"AK_RUNNER__PARK_AFTER": "1", "AK_JOBS__ACK_WAIT": "5", "AK_LOG_LEVEL": "INFO"}
    stack = start_stack(home, env)
    os.environ["AK_HTTP__SERVICE_URL"] = stack.url
    os.environ["AK_TOKEN"] = stack.token
    try:
        paths = stack.deploy_paths(PROJECT)
        time.sleep(2)
        runner0, dispatcher0 = _runner_kib(stack), _service_kib(stack, "dispatcher")
        system0, others0 = _system_kib(stack), _others_kib(stack)
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: fire(stack, paths["waits"], {}), range(n)))
        fired = time.monotonic() - t0
        deadline = time.monotonic() + 60 + n * 0.2
        peak = 0
        # (AK_PARKED, not the runner's log: a session whose attempt lost its job while
        # parking is parked by its job's next delivery, which logs no "parked in step")
        while (parked := parked_count(stack)) < n:
            peak = max(peak, _runner_kib(stack))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{parked} of {n} sessions parked in time")
            time.sleep(1.0)
        all_parked = time.monotonic() - t0
        time.sleep(3)  # killed workers reaped, spare ones back
        runner1, dispatcher1 = _runner_kib(stack), _service_kib(stack, "dispatcher")
        system1, others1 = _system_kib(stack), _others_kib(stack)
    finally:
        stack.stop()
    return {
        "sessions": float(n),
        "fired in (s)": fired,
        "all parked after (s)": all_parked,
        "runner before (MiB)": runner0 / 1024,
        "runner at its peak while parking (MiB)": peak / 1024,
        "runner with all parked (MiB)": runner1 / 1024,
        "runner per parked session (KiB)": (runner1 - runner0) / n,
        "dispatcher before (MiB)": dispatcher0 / 1024,
        "dispatcher with all parked (MiB)": dispatcher1 / 1024,
        "dispatcher per parked session (KiB)": (dispatcher1 - dispatcher0) / n,
        "system before (MiB)": system0 / 1024,
        "system with all parked (MiB)": system1 / 1024,
        "system per parked session, all of it / N (KiB)": system1 / n,
        "system per parked session, growth / N (KiB)": (system1 - system0) / n,
        **{f"{k} before (MiB)": others0[k] / 1024 for k in others0},
        **{f"{k} with all parked (MiB)": others1[k] / 1024 for k in others1},
    }


BENCHMARKS: dict[str, tuple[str, Callable[..., Result]]] = {
    "activity": ("Activity overhead (1,000 trivial activities)", bench_activity),
    "sealing": ("Sealing a journal record (per activity, in one process)", bench_sealing),
    "webhook": ("Webhook to handler (200 sequential requests)", bench_webhook),
    "throughput": ("Throughput (trivial sessions, bounded offered load)", bench_throughput),
    "replay": ("Replay of a 1,000-activity journal after a runner kill", bench_replay),
    "memory": ("Memory per idle waiting session (50 sessions in a durable sleep)", bench_memory),
    "cli": ("`ak` commands, wall time from spawn to exit (20 runs each)", bench_cli),
}


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), "
        f"{mem:.0f} GiB, Python {platform.python_version()}"
    )


def main() -> None:
    if sys.argv[1:2] == ["chaos"]:  # the chaos soak has its own options (bench/chaos.py)
        from bench import chaos

        chaos.main(sys.argv[2:])
        return
    if "--peers" in sys.argv[1:]:  # side by side with Restate, Temporal, DBOS (bench/peers.py)
        from bench import peers

        peers.main([a for a in sys.argv[1:] if a != "--peers"])
        return
    if sys.argv[1:2] == ["parked"]:  # written to docs/benchmarks-notes.md by hand
        n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
        r = bench_parked(n)
        print("parked: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
        return
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=20, help="throughput load, seconds")
    ap.add_argument("--rate", type=float, default=600, help="throughput offered load, sessions/s")
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS) + ["dbos"])
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    chosen = args.only or [*BENCHMARKS, "dbos"]
    results: dict[str, list[Result]] = {}
    home = Path(tempfile.mkdtemp(prefix="ak-bench-"))
    stack = start_stack(home, {"AK_JOBS__ACK_WAIT": "2", "AK_LOG_LEVEL": "WARNING"})
    os.environ["AK_HTTP__SERVICE_URL"] = stack.url
    os.environ["AK_TOKEN"] = stack.token
    try:
        paths = stack.deploy_paths(PROJECT)
        for name in chosen:
            if name == "dbos":
                continue
            title, fn = BENCHMARKS[name]
            for i in range(args.runs):
                kw = {"duration": args.duration, "rate": args.rate} if name == "throughput" else {}
                r = fn(stack, paths, **kw)
                print(f"{name} run {i + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
                results.setdefault(name, []).append(r)
    finally:
        stack.stop()
    if "dbos" in chosen:
        from bench import dbos_side

        for i in range(args.runs):
            r = dbos_side.compare(results)
            print(f"dbos run {i + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
            results.setdefault("dbos", []).append(r)
    write(Path(args.out), results, " ".join(["python -m bench", *sys.argv[1:]]))


def write(out: Path, results: dict[str, list[Result]], command: str) -> None:
    titles = {k: t for k, (t, _) in BENCHMARKS.items()}
    titles["dbos"] = "Side by side with DBOS (SQLite system database)"
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {machine()}  ",
        f"Command: `{command}` (from the repository root, `.venv` active)  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "Each number is the median of the runs, with the lowest and highest run in brackets.",
        "",
    ]
    for name, runs in results.items():
        lines += [f"## {titles[name]}", "", "| metric | median | [min, max] |", "|---|---|---|"]
        for key in runs[0]:
            vals = [r[key] for r in runs]
            lines.append(
                f"| {key} | {statistics.median(vals):.3f} | [{min(vals):.3f}, {max(vals):.3f}] |"
            )
        lines.append("")
    notes = out.with_name("benchmarks-notes.md")
    if notes.exists():
        lines += [notes.read_text()]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
