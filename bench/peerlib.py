"""What the side-by-side benchmark (bench/peers.py) shares between our stack and the peers'
drivers: processes that die with their parent, CPU and memory of a set of processes, a
closed-loop HTTP load generator, and the table of ratios.  Standard library only: the
drivers run on another virtual environment's Python (one with the peers' SDKs)."""

from __future__ import annotations

import asyncio
import ctypes
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


class Metrics(dict[str, "float | None"]):
    """A system's results; each is logged as it is set (progress for a long run)."""

    def __init__(self, system: str) -> None:
        super().__init__()
        self.system = system

    def __setitem__(self, key: str, value: float | None) -> None:
        super().__setitem__(key, value)
        log(f"{self.system}: {key} = {fmt(value)}")


def exit_on_sigterm() -> None:
    """SIGTERM (bench/peers.py stopping a driver) unwinds like Ctrl-C, so that the driver's
    ``finally`` stops its servers and removes its temporary directory."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def add_workload_options(ap: Any) -> None:
    """The workload options every peer's driver takes (``argparse.ArgumentParser``)."""
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--starts", type=int, default=200)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sleepers", default="50,1000")


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL when the process that started it dies (prctl
    PR_SET_PDEATHSIG), so that a killed benchmark leaves no servers behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class Procs:
    """Processes this benchmark started, each in a session (process group) of its own;
    ``stop_all`` ends each group: SIGTERM, then SIGKILL after a grace period."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None, cwd: str = ""
    ) -> subprocess.Popen[bytes]:
        out = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen(
            list(argv),
            env={**os.environ, **(env or {})},
            cwd=cwd or None,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        out.close()
        self.started.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # the group too: children a server forked may outlive it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def stop_all(self) -> None:
        for _, proc in reversed(self.started):
            self.stop(proc)
        self.started.clear()

    def log_tail(self, name: str, chars: int = 2000) -> str:
        p = self.logdir / f"{name}.log"
        return p.read_text(errors="replace")[-chars:] if p.exists() else ""


def tree(*roots: int) -> list[int]:
    """The processes ``roots`` and all their descendants, alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_ms(pids: Sequence[int]) -> float:
    """User and system CPU of these processes, in milliseconds, including the children they
    have waited for (a process that exits meanwhile moves into its parent's count)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks * 1000 / CLK_TCK


def pss_kib(pids: Sequence[int]) -> int:
    """Proportional set size summed: pages shared between them counted once."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


def wait_until(probe: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)


def http_ok(host: str, port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        conn.request("GET", path)
        ok = conn.getresponse().status < 500
        conn.close()
        return ok
    except OSError:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def lines_in(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


# --- closed-loop HTTP load


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One HTTP/1.1 response: its status, and whether the server keeps the connection."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length, chunked, keep = 0, False, True
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            keep = False
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, keep


def closed_loop(
    url: str,
    body: Any,
    concurrency: int = 64,
    duration: float = 20,
    timeout: float = 30,
) -> dict[str, float]:
    """``concurrency`` callers, each POSTing ``body`` as JSON and waiting for the answer
    before its next request, for ``duration`` seconds (then the calls in flight finish).
    Answered 2xx: ok; another status or a broken connection: failed; no answer within
    ``timeout``: lost.  The CPU this process spent is returned as ``client_cpu_ms``."""
    hostport, _, path = url.removeprefix("http://").partition("/")
    host, _, port = hostport.partition(":")
    data = json.dumps(body).encode()
    request = (
        f"POST /{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data
    lat: list[float] = []
    counts = {"ok": 0, "failed": 0, "lost": 0}
    last_done = [0.0]

    async def caller(stop_at: float) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, int(port))
                conn[1].write(request)
                status, keep = await asyncio.wait_for(_read_response(conn[0]), timeout)
            except TimeoutError:
                counts["lost"] += 1
                keep, status = False, 0
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                counts["failed"] += 1
                keep, status = False, 0
                await asyncio.sleep(0.01)
            else:
                counts["ok" if 200 <= status < 300 else "failed"] += 1
                lat.append((time.monotonic() - t0) * 1000)
                last_done[0] = time.monotonic()
            if not keep and conn is not None:
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    async def run() -> float:
        t0 = time.monotonic()
        await asyncio.gather(*(caller(t0 + duration) for _ in range(concurrency)))
        return t0

    cpu0 = time.process_time()
    t0 = asyncio.run(run())
    cpu = (time.process_time() - cpu0) * 1000
    elapsed = max(1e-9, last_done[0] - t0)
    return {
        "rate": counts["ok"] / elapsed,
        "ok": counts["ok"],
        "failed": counts["failed"],
        "lost": counts["lost"],
        "p50_ms": pct(lat, 50) if lat else float("nan"),
        "p99_ms": pct(lat, 99) if lat else float("nan"),
        "client_cpu_ms": cpu,
    }


# --- the table


# (key, label, unit); for closed_rate higher is better, for the others lower
ROWS: list[tuple[str, str, str]] = [
    ("step_p50_ms", "per durable step p50 (1,000 sequential trivial steps)", "ms"),
    ("step_p99_ms", "per durable step p99", "ms"),
    ("start_p50_ms", "start to handler's first line p50 (200 sequential)", "ms"),
    ("start_p99_ms", "start to handler's first line p99", "ms"),
    ("closed_rate", "closed loop: workflows/s (64 in flight, one step each)", "/s"),
    ("closed_p99_ms", "closed loop: caller's latency p99", "ms"),
    ("closed_bad", "closed loop: failed + lost", ""),
    ("cpu_ms", "CPU per workflow, all processes of the system (closed loop)", "ms"),
    ("mem50_mib", "memory per waiting workflow (50 in a durable sleep)", "MiB"),
    ("mem1000_mib", "memory per waiting workflow (1,000 more)", "MiB"),
    ("replay_ms", "replay of a 1,000-step history", "ms"),
]


def fmt(v: float | None) -> str:
    if v is None or v != v:
        return "n/a"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 0.1:
        return f"{v:.2f}"
    return "0.000" if round(v, 3) == 0 else f"{v:.3f}"


def ratio(ours: float | None, peer: float | None) -> str:
    """ours / peer; "n/a" when either is missing or not above zero (a memory growth within
    the measurement's noise can come out negative)."""
    if ours is None or peer is None or ours != ours or peer != peer or ours <= 0 or peer <= 0:
        return "n/a"
    return f"{ours / peer:.2f}x"


def ratio_table(systems: list[dict[str, Any]]) -> list[str]:
    """Markdown: a row per metric, a column per system, and after each peer's column the
    ratio ours / peer.  ``systems[0]`` is ours; each system is ``{"name": ..., "metrics":
    {key: value or None}, "notes": {key: text}}`` (a note replaces "n/a" or follows the
    value, e.g. which variant of a step was measured)."""
    ours = systems[0]
    head = ["metric", ours["name"]]
    for peer in systems[1:]:
        head += [peer["name"], "ours / " + peer["short"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(system: dict[str, Any], key: str) -> str:
        v = system["metrics"].get(key)
        note = system.get("notes", {}).get(key, "")
        text = fmt(v)
        if note:
            text = note if text == "n/a" else f"{text} ({note})"
        return text

    for key, label, unit in ROWS:
        if all(s["metrics"].get(key) is None and key not in s.get("notes", {}) for s in systems):
            continue
        row = [f"{label}{', ' + unit if unit else ''}", cell(ours, key)]
        for peer in systems[1:]:
            r = (
                ""
                if key == "closed_bad"
                else ratio(ours["metrics"].get(key), peer["metrics"].get(key))
            )
            row += [cell(peer, key), r]
        lines.append("| " + " | ".join(row) + " |")
    return lines


BEGIN = "<!-- peers: generated by `python -m bench --peers`, rewritten by each run -->"
END = "<!-- peers: end -->"


def put_section(path: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replaces the section between ``begin`` and ``end`` in ``path`` by ``text`` (which
    carries the markers), or appends it; the rest of the file stays as it was."""
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old.split(begin, 1)[1]:
        head, rest = old.split(begin, 1)
        new = head + text + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


if __name__ == "__main__":  # a load generator for a shell: URL JSON-BODY [CONCURRENCY DURATION]
    args = sys.argv[1:]
    print(
        json.dumps(
            closed_loop(
                args[0],
                json.loads(args[1]),
                int(args[2]) if len(args) > 2 else 64,
                float(args[3]) if len(args) > 3 else 20,
            )
        )
    )
