"""Faults for the chaos soak: a 3-node NATS cluster the harness owns, a seeded plan of
faults, and the thread that carries it out (SIGKILL, or SIGSTOP then SIGCONT)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from akcore import natsserver

SERVICES = ("ingress", "dispatcher", "runner", "store")
NATS = "nats"
DB = "db"  # the harness's own PostgreSQL (``PgServer``)
KILL, FREEZE = "kill", "freeze"
MODES = {"kill": (KILL,), "freeze": (FREEZE,), "both": (KILL, FREEZE)}


class NatsNode:
    """One node of the cluster, restartable on the same ports and store."""

    def __init__(self, name: str, store: Path, route_port: int, peers: list[int]) -> None:
        self.name, self.store, self.route_port, self.peers = name, store, route_port, peers
        self.port = natsserver.free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc, _ = natsserver.start(
            self.store,
            port=self.port,
            log_file=self.store.parent / f"{self.name}.log",
            cluster=(self.name, self.route_port, self.peers),
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server would never stop
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class PgServer:
    """A PostgreSQL server of the harness's own (initdb in ``root``, a free port), which
    it kills (SIGKILL of the postmaster and every backend, as a crash: the next start
    recovers from its WAL), freezes and restarts; never the machine's own. As root, it
    runs as the user ``postgres`` (initdb refuses root)."""

    BIN = Path("/usr/lib/postgresql")

    def __init__(self, log: Path) -> None:
        """``log``: where its log is copied as it stops (its files are in a directory of
        their own, which the user ``postgres`` can reach: not a test's, which only root can,
        and removed as it stops)."""
        self.log = log
        self.root = Path(tempfile.mkdtemp(prefix="ak-chaos-pg-"))
        self.data = self.root / "data"
        self.port = natsserver.free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        versions = sorted(self.BIN.glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
        if not versions:
            raise RuntimeError(f"no PostgreSQL server under {self.BIN} (apt install postgresql)")
        self.bin = versions[-1].parent
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-o", opts, "start")

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, writer, WAL writer...)."""
        try:
            master = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        tasks = Path(f"/proc/{master}/task").glob("*/children")
        return [master, *(int(p) for t in tasks for p in _words(t))]

    def kill(self) -> int:
        pids = self.pids()
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        return pids[0] if pids else 0

    def freeze(self, sig: int = signal.SIGSTOP) -> int:
        pids = self.pids()
        for pid in pids:
            _signal(pid, sig)
        return pids[0] if pids else 0

    def running(self) -> bool:
        """Whether its postmaster is alive (not gone, not a zombie)."""
        pids = self.pids()
        try:
            stat = Path(f"/proc/{pids[0]}/stat").read_text() if pids else ""
        except OSError:
            return False
        return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"

    def stop(self) -> None:
        self.freeze(signal.SIGCONT)  # a frozen server would never stop
        try:
            if self.running():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            with contextlib.suppress(OSError):
                shutil.copyfile(self.root / "postgres.log", self.log)
            shutil.rmtree(self.root, ignore_errors=True)


def nats_cluster(root: Path, size: int = 3) -> list[NatsNode]:
    """Starts a JetStream cluster of ``size`` nodes under ``root`` (stop each with stop())."""
    routes = [natsserver.free_port() for _ in range(size)]
    nodes = [
        NatsNode(f"n{i}", root / f"n{i}", routes[i], [r for j, r in enumerate(routes) if j != i])
        for i in range(size)
    ]
    try:
        for node in nodes:
            node.start()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def service_pids(parent: int, service: str) -> list[int]:
    """The live processes of ``service`` (``python -m ak_<service>``) among ``parent``'s
    children; one that ended meanwhile, or is a zombie, is left out."""
    found = []
    children = [p for t in Path(f"/proc/{parent}/task").glob("*/children") for p in _words(t)]
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"ak_{service}".encode() in cmdline and state != "Z":
            found.append(pid)
    return found


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the start of the load
    action: str  # KILL or FREEZE
    target: str  # a service name or NATS


def plan(
    seed: int, duration: float, every: float, mode: str, targets: tuple[str, ...]
) -> list[Fault]:
    """A fault every ``every`` seconds on average (uniformly 0.5x to 1.5x apart) until
    ``duration``, each on a target and with an action of ``mode`` drawn at random."""
    rng = random.Random(seed)
    faults, t = [], every * rng.uniform(0.5, 1.5)
    while t < duration:
        faults.append(Fault(t, rng.choice(MODES[mode]), rng.choice(targets)))
        t += every * rng.uniform(0.5, 1.5)
    return faults


@dataclass
class Impaired:
    """A process the injector has stopped (frozen) or a NATS node it has killed."""

    label: str  # service name or NATS node name
    pid: int
    until: float  # monotonic time it is resumed or restarted
    node: NatsNode | None = None
    db: PgServer | None = None


@dataclass
class Injector:
    """Carries out a plan on a background thread; ``pids(service)`` names the live processes
    of a service (they change as `ak up` restarts them; see service_pids). A victim is
    drawn among processes not already frozen; a NATS node only while no other node is down
    or frozen (a 3-node cluster keeps its quorum); a service keeps one process unfrozen."""

    faults: list[Fault]
    pids: Callable[[str], list[int]]
    nodes: list[NatsNode]
    freeze_seconds: float = 15.0
    nats_down_seconds: float = 5.0
    seed: int = 0
    db: PgServer | None = None  # the database the harness owns, for DB faults
    db_down_seconds: float = 5.0
    done: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, label) -> count
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)
    history: list[str] = field(default_factory=list)
    _impaired: list[Impaired] = field(default_factory=list)
    _t0: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="chaos-faults", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends the plan and brings every frozen process and killed node back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for imp in list(self._impaired):
            self._recover(imp)

    def _loop(self) -> None:
        rng = random.Random(self.seed + 1)
        pending = sorted(self.faults, key=lambda f: f.at)
        while not self._stop.wait(0.05):
            now = time.monotonic()
            for imp in [i for i in self._impaired if i.until <= now]:
                self._recover(imp)
            while pending and pending[0].at <= now - self._t0:
                fault = pending.pop(0)
                try:
                    self._apply(fault, rng)
                except Exception as e:  # one fault that could not be made ends nothing
                    self.skipped[(fault.action, fault.target)] += 1
                    self._note(f"{fault.action} {fault.target}: failed: {e!r}")

    def _note(self, text: str) -> None:
        wall = time.strftime("%H:%M:%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
        self.history.append(f"{time.monotonic() - self._t0:7.2f}s {wall} UTC {text}")

    def _apply(self, fault: Fault, rng: random.Random) -> None:
        if fault.target == NATS:
            self._apply_nats(fault, rng)
            return
        if fault.target == DB:
            self._apply_db(fault)
            return
        frozen = {i.pid for i in self._impaired}
        pids = self.pids(fault.target)
        free = [p for p in pids if p not in frozen]
        if not free or (fault.action == FREEZE and len(free) < len(pids)):
            self.skipped[(fault.action, fault.target)] += 1
            self._note(f"{fault.action} {fault.target}: skipped (no process to spare)")
            return
        pid = rng.choice(free)
        if fault.action == KILL:
            _signal(pid, signal.SIGKILL)
        else:
            _signal(pid, signal.SIGSTOP)
            until = time.monotonic() + self.freeze_seconds
            self._impaired.append(Impaired(fault.target, pid, until))
        self.done[(fault.action, fault.target)] += 1
        self._note(f"{fault.action} {fault.target} pid {pid}")

    def _apply_nats(self, fault: Fault, rng: random.Random) -> None:
        if any(i.node is not None for i in self._impaired):
            self.skipped[(fault.action, NATS)] += 1
            self._note(f"{fault.action} nats: skipped (a node is already down or frozen)")
            return
        node = rng.choice(self.nodes)
        assert node.proc is not None
        pid = node.proc.pid
        if fault.action == KILL:
            node.proc.kill()
            node.proc.wait()
            until = time.monotonic() + self.nats_down_seconds
        else:
            node.proc.send_signal(signal.SIGSTOP)
            until = time.monotonic() + self.freeze_seconds
        self._impaired.append(Impaired(node.name, pid, until, node))
        self.done[(fault.action, f"{NATS} {node.name}")] += 1
        self._note(f"{fault.action} nats {node.name} pid {pid}")

    def _apply_db(self, fault: Fault) -> None:
        db = self.db
        if db is None or any(i.db is not None for i in self._impaired):
            self.skipped[(fault.action, DB)] += 1
            self._note(f"{fault.action} db: skipped (none of the harness's, or already down)")
            return
        if fault.action == KILL:
            pid = db.kill()
            until = time.monotonic() + self.db_down_seconds
        else:
            pid = db.freeze()
            until = time.monotonic() + self.freeze_seconds
        self._impaired.append(Impaired(DB, pid, until, db=db))
        self.done[(fault.action, DB)] += 1
        self._note(f"{fault.action} db pid {pid}")

    def _recover(self, imp: Impaired) -> None:
        self._impaired.remove(imp)
        if imp.db is not None:
            if imp.db.running():
                imp.db.freeze(signal.SIGCONT)
                self._note(f"resumed db pid {imp.pid}")
            else:
                imp.db.start()  # (recovers from its WAL, as after a crash)
                self._note("restarted db")
            return
        if imp.node is not None and imp.node.proc is not None and imp.node.proc.poll() is not None:
            imp.node.start()
            self._note(f"restarted nats {imp.node.name}")
        else:
            _signal(imp.pid, signal.SIGCONT)
            self._note(f"resumed {imp.label} pid {imp.pid}")


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:  # a thread that ended
        return []


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it died on its own meanwhile
