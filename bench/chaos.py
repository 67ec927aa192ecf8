"""The chaos soak: steady webhook load on a stack with two of each service, PostgreSQL and a
3-node NATS cluster, while random processes are killed (SIGKILL) or frozen (SIGSTOP, then
SIGCONT); then it counts lost, duplicated and stuck sessions and activities run twice.

``python -m bench chaos [--rate 20] [--duration 600] [--every 5] [--mode both] ...``
(docs/reliability.md). ``run(Config(...))`` does the same from a test.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ak_cli import client
from ak_cli.sessionlog import log_entries
from akcore.config import ENV_SERVICE_URL, ENV_TOKEN

from bench.chaos_faults import (
    DB,
    MODES,
    NATS,
    SERVICES,
    Fault,
    Injector,
    NatsNode,
    PgServer,
    nats_cluster,
    plan,
    service_pids,
)
from bench.chaos_tally import Effect, Tally, parse_effects, recorded_times, repeated, tally
from tests.helpers import Stack, start_stack

PROJECT = Path(__file__).parent / "chaos_project"
PG_URL = os.environ.get("AK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
UNENDED = ("CREATED", "RUNNING")


@dataclass
class Config:
    rate: float = 20.0  # webhooks per second
    duration: float = 600.0  # seconds of load (and of faults)
    every: float = 5.0  # seconds between faults, on average
    mode: str = "both"  # kill, freeze or both
    freeze: float = 15.0  # seconds a frozen process stays stopped
    nats_down: float = 5.0  # seconds a killed NATS node stays down
    db_down: float = 5.0  # seconds the killed database stays down (DB among the targets)
    targets: tuple[str, ...] = (*SERVICES, NATS)
    sleep: float = 2.0  # seconds of each durable sleep
    quick_share: float = 0.25  # share of sessions without sleeps
    work: float = 0.05  # seconds each activity takes
    drain: float = 300.0  # seconds to wait for every session to end
    seed: int = 1
    faults: list[Fault] | None = None  # a fixed plan instead of a random one
    dsn: str = ""  # a database to use; default: a fresh one on PG_URL, dropped afterwards
    root: Path | None = None  # where homes, logs and the side-effect log go
    env: dict[str, str] = field(default_factory=dict)  # more settings for `ak up`
    counts: int = 2  # processes of each service


def run(cfg: Config) -> Tally:
    """Runs one soak and returns its figures (printed as it ends)."""
    root = cfg.root or Path(tempfile.mkdtemp(prefix="ak-chaos-"))
    effects = root / "effects"
    effects.mkdir(parents=True, exist_ok=True)
    print(f"[chaos] run directory {root}", flush=True)
    with _server(cfg, root) as db, _database(cfg.dsn, db) as dsn, _cluster(root / "nats") as nodes:
        env = {
            "AK_NATS_URL": ",".join(n.url for n in nodes),
            "AK_NATS__REPLICAS": str(len(nodes)),
            "AK_DB__DSN": dsn,
            "AK_LOG_LEVEL": "WARNING",
            "CHAOS_EFFECTS": str(effects),
            **cfg.env,
        }
        flags = ("--ingresses", "--dispatchers", "--runners", "--stores")
        args = tuple(a for flag in flags for a in (flag, str(cfg.counts)))
        stack = start_stack(root / "home", env, args)
        try:
            with _service_url(stack):
                t = _soak(cfg, stack, nodes, effects, db)
                _keep_examples(t, effects, root / "examples.jsonl")
        finally:
            stack.stop()
    print(t.table(), flush=True)
    (root / "table.md").write_text(t.table() + "\n")
    print(f"[chaos] logs, side effects and examples in {root}", flush=True)
    return t


def _soak(
    cfg: Config, stack: Stack, nodes: list[NatsNode], effects: Path, db: PgServer | None
) -> Tally:
    path = stack.deploy_paths(PROJECT)["soak"]
    faults = cfg.faults
    if faults is None:
        faults = plan(cfg.seed, cfg.duration, cfg.every, cfg.mode, cfg.targets)
    injector = Injector(
        faults,
        lambda service: service_pids(stack.proc.pid, service),
        nodes,
        cfg.freeze,
        cfg.nats_down,
        seed=cfg.seed,
        db=db,
        db_down_seconds=cfg.db_down,
    )
    print(f"[chaos] {cfg.rate:g}/s for {cfg.duration:g}s, {len(faults)} faults", flush=True)
    injector.start()
    try:
        answers = _load(stack.url, path, cfg)
    finally:
        injector.stop()
    (effects.parent / "faults.log").write_text("\n".join(injector.history) + "\n")
    print(f"[chaos] load over; draining (up to {cfg.drain:g}s)", flush=True)
    drained = _drain({eid for status, eid in answers if status == "202"}, cfg.drain)
    sessions = _sessions()
    execs = {s["session_id"]: _effects(effects, s["session_id"]) for s in sessions}
    recorded = {
        sid: recorded_times(list(client.records(sid, kinds=["activity"])))
        for sid, e in execs.items()
        if repeated(e)
    }
    t = tally(answers, sessions, execs, recorded)
    t.unlisted = sum(1 for f in effects.iterdir() if f.name not in execs)
    t.faults, t.drained = injector.done, drained
    t.skipped_faults = sum(injector.skipped.values())
    return t


def _load(url: str, path: str, cfg: Config) -> list[tuple[str, str]]:
    """Offers ``cfg.rate`` webhooks a second for ``cfg.duration`` seconds, each on a new
    connection (so that the kernel spreads them over the ingresses), whatever the earlier
    ones are doing; (status or error, event id) of each."""
    answers: list[tuple[str, str]] = []
    lock = threading.Lock()
    host, _, port = url.removeprefix("http://").partition(":")
    quick_every = round(1 / cfg.quick_share) if cfg.quick_share else 0

    def send(n: int) -> None:
        sleep = 0.0 if quick_every and n % quick_every == 0 else cfg.sleep
        body = json.dumps({"n": n, "sleep": sleep, "work": cfg.work})
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            answer = (str(resp.status), resp.getheader("autokitteh-event-id", ""))
        except (OSError, http.client.HTTPException) as e:
            kind = "timeout" if isinstance(e, socket.timeout) else type(e).__name__
            answer = (kind, "")
        finally:
            conn.close()
        with lock:
            answers.append(answer)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=int(cfg.rate * 12) + 8) as pool:
        n = 0
        while n < cfg.rate * cfg.duration:
            time.sleep(max(0.0, t0 + n / cfg.rate - time.monotonic()))
            pool.submit(send, n)
            n += 1
    return answers


def _sessions() -> list[dict[str, Any]]:
    """Every session of the project, a page at a time."""
    found: list[dict[str, Any]] = []
    token = ""
    while True:
        page = client.call("session.list", project="chaos", page_size=1000, page_token=token)
        found += page["sessions"]
        token = page["next_page_token"]
        if not token:
            return found


def _drain(accepted: set[str], timeout: float) -> bool:
    """Waits until every accepted event has a session and no session is unended, twice in a
    row 5 s apart with no new session between (a process that thawed late may still start
    sessions of requests it had taken, whose clients gave up on them)."""
    deadline = time.monotonic() + timeout
    settled = -1  # the number of sessions when everything had ended, at the last check
    while time.monotonic() < deadline:
        try:
            sessions = _sessions()
        except Exception as e:  # the stack may still be recovering
            print(f"[chaos] listing sessions: {e}", flush=True)
            time.sleep(2)
            continue
        unended = sum(s["state"] in UNENDED for s in sessions)
        missing = len(accepted - {s["event_id"] for s in sessions})
        if not unended and not missing:
            if settled == len(sessions):
                return True
            settled = len(sessions)
        else:
            settled = -1
            print(f"[chaos] {unended} sessions not ended, {missing} events without one", flush=True)
        time.sleep(5)
    return False


def _effects(directory: Path, sid: str) -> list[Effect]:
    try:
        return parse_effects((directory / sid).read_text())
    except FileNotFoundError:
        return []


def _keep_examples(t: Tally, effects: Path, out: Path) -> None:
    """Writes each example session's `ak session log -j` entries and side effects."""
    with out.open("w") as f:
        for kind, refs in t.examples.items():
            for ref in refs:
                sid = ref if not ref.startswith("evt_") else ""
                entries = []
                if sid:
                    entries = [e for r in client.records(sid) for e in log_entries(r)]
                lines = _effects(effects, sid) if sid else []
                f.write(
                    json.dumps(
                        {
                            "kind": kind,
                            "ref": ref,
                            "log": entries,
                            "effects": [vars(e) for e in lines],
                        },
                        default=str,
                    )
                    + "\n"
                )


@contextmanager
def _service_url(stack: Stack) -> Iterator[None]:
    """Points this process's API calls (``ak_cli.client``) at the stack, with its API token,
    for a while."""
    wanted = {ENV_SERVICE_URL: stack.url, ENV_TOKEN: stack.token}
    before = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


@contextmanager
def _server(cfg: Config, root: Path) -> Iterator[PgServer | None]:
    """With the database among the targets, a PostgreSQL server of the run's own (in the run
    directory), which the faults kill and freeze; stopped afterwards."""
    if DB not in cfg.targets:
        yield None
        return
    if cfg.dsn:
        raise ValueError("the database as a target needs the harness's own server: no dsn")
    server = PgServer(root / "postgres.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def _database(dsn: str, server: PgServer | None = None) -> Iterator[str]:
    """``dsn`` if given, else a fresh database on ``server`` (or PG_URL), dropped
    afterwards."""
    if dsn:
        yield dsn
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = server.url if server is not None else PG_URL
    # (pre-ping: the harness's own server may have been killed since the database was made)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"ak_chaos_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def _cluster(root: Path) -> Iterator[list[NatsNode]]:
    nodes = nats_cluster(root)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def main(argv: list[str]) -> Tally:
    d = Config()
    ap = argparse.ArgumentParser(prog="python -m bench chaos", description=__doc__)
    ap.add_argument("--rate", type=float, default=d.rate, help="webhooks per second")
    ap.add_argument("--duration", type=float, default=d.duration, help="seconds of load")
    ap.add_argument("--every", type=float, default=d.every, help="seconds between faults")
    ap.add_argument("--mode", choices=sorted(MODES), default=d.mode)
    ap.add_argument("--freeze", type=float, default=d.freeze, help="seconds frozen")
    ap.add_argument("--nats-down", type=float, default=d.nats_down, help="seconds down")
    ap.add_argument(
        "--db-down", type=float, default=d.db_down, help="seconds the killed database is down"
    )
    ap.add_argument(
        "--targets",
        default=",".join(d.targets),
        help=f"comma-separated, among {', '.join((*SERVICES, NATS, DB))} (db: a PostgreSQL "
        "of the run's own, not in the default)",
    )
    ap.add_argument("--sleep", type=float, default=d.sleep, help="seconds per durable sleep")
    ap.add_argument("--drain", type=float, default=d.drain, help="seconds to wait at the end")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--dir", type=Path, default=None, help="run directory (default: a new one)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for `ak up` (e.g. AK_JOBS__ACK_WAIT=5)",
    )
    a = ap.parse_args(argv)
    # A session of its own, where it can: started from a shell that exits (nohup, a
    # script), the stack's process group would be orphaned, and the kernel turns a frozen
    # service's SIGSTOP into SIGHUP, a kill the fault plan did not make.
    with contextlib.suppress(PermissionError):  # (already a group leader: a shell's job)
        os.setsid()
    targets = tuple(x for x in a.targets.split(",") if x)
    bad = set(targets) - {*SERVICES, NATS, DB}
    if bad:
        ap.error(f"unknown targets: {', '.join(sorted(bad))}")
    cfg = Config(
        rate=a.rate,
        duration=a.duration,
        every=a.every,
        mode=a.mode,
        freeze=a.freeze,
        nats_down=a.nats_down,
        db_down=a.db_down,
        targets=targets,
        sleep=a.sleep,
        drain=a.drain,
        seed=a.seed,
        root=a.dir,
        env=dict(kv.split("=", 1) for kv in a.set),
    )
    return run(cfg)
