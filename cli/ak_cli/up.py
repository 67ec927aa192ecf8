"""``ak up``: the whole stack as plain processes, supervised until Ctrl-C."""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import typer
from akcore import cgroups, config, natsauth, natsserver, netfence
from akcore.errors import AKError
from akcore.retention import Retention

from . import access
from .restarts import Restarts

SERVICES = ("store", "dispatcher", "runner", "ingress")
STOP_GRACE = 10.0
NATS_USERS = "nats-users"  # in the data home: the embedded NATS's password of each service


def say(text: str) -> None:
    typer.echo(f"[ak] {text}", err=True)


@dataclass
class Child:
    """A supervised process: a service, or the embedded nats-server."""

    service: str
    launch: Callable[[], subprocess.Popen[bytes]]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    restarts: Restarts = field(default_factory=Restarts)

    def start(self) -> None:
        self.started = time.monotonic()
        try:
            self.proc = self.launch()
        except (OSError, RuntimeError) as e:  # it did not start (its port taken, ...)
            self._ended(1, f"did not start ({e})")

    def check(self) -> None:
        """Restarts the child if it ended: at once, or after a back-off in a crash loop."""
        if self.proc is None:
            if time.monotonic() >= self.restart_at:
                say(f"restarting {self.service}")
                self.start()
            return
        code = self.proc.poll()
        if code is not None:
            self._ended(code)

    def _ended(self, code: int, how: str = "") -> None:
        now = time.monotonic()
        delay, what = self.restarts.after(code, now - self.started, how)
        self.proc = None
        if delay <= 0:
            if how:  # it did not start: tried again from the loop (which may be stopping)
                say(f"{self.service} {what}")
                self.restart_at = now
                return
            say(f"{self.service} {what}; restarting it now")
            self.start()
            return
        say(f"{self.service} {what}; restarting it in {delay:g}s")
        self.restart_at = now + delay


def _service(service: str, env: dict[str, str], lock: int) -> Callable[[], subprocess.Popen[bytes]]:
    # The store's files (the SQLite database and its journal) are for its user alone.
    umask = 0o077 if service == "store" else -1
    argv = [sys.executable, "-m", f"ak_{service}"]
    return lambda: subprocess.Popen(
        argv,
        env=env,
        umask=umask,
        pass_fds=(lock,),
        preexec_fn=natsserver.ends_with_parent(),
    )


LOCK_FILE = "ak-up.lock"


def _lock_data_home(data: Path) -> int:
    """Holds the data home for this ``ak up`` and every process it starts (they inherit
    the lock): a second one on the same data home would run a second nats-server on the
    same JetStream files and a second store on the same database, and accepted events
    would be lost. Raises AKError naming who holds it."""
    path = data / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holders = _holders(path)
        raise AKError(
            f"another `ak up` is using the data home {data}"
            + (f" (processes {', '.join(map(str, holders))})" if holders else "")
            + ", or the processes it started are still running after it was killed: stop "
            "them first (two on one data home lose events), or give this one a data home of "
            "its own (XDG_DATA_HOME)"
        ) from None
    except OSError as e:  # (a file system without locks: NFS mounted nolock, some FUSE)
        os.close(fd)
        raise AKError(
            f"cannot lock {path}: {e.strerror}: `ak up` needs a data home on a file system "
            "with file locks, to keep a second one off it (XDG_DATA_HOME)"
        ) from None
    os.set_inheritable(fd, True)
    return fd


def _holders(path: Path) -> list[int]:
    """The processes that have ``path`` open (those this user may look at)."""
    found = []
    for pid in (
        (int(p) for p in os.listdir("/proc") if p.isdigit()) if Path("/proc").is_dir() else ()
    ):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    found.append(pid)
                    break
        except OSError:
            continue
    return sorted(found)


def _wait_ready(url: str, children: list[Child], stopping: list[bool]) -> bool:
    while not stopping:
        for c in children:
            c.check()
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        except http.client.HTTPException:  # (not an HTTP server: it took the port first)
            raise AKError(
                f"something else answers on {url}, not as HTTP: another program took the "
                "port before this stack's HTTP server. Start again, or pick another address "
                f"with --http-addr or {config.ENV_HTTP_ADDR}"
            ) from None
        time.sleep(0.2)
    return False


def up(
    mode: str,
    http_addr: str | None,
    nats_url: str | None,
    counts: dict[str, int] | None = None,
    db: str | None = None,
) -> None:
    """``counts``: how many processes of each service (default one each)."""
    if mode not in ("dev", "default"):
        raise AKError(f"unknown mode {mode!r}: use dev or default")
    counts = {s: (counts or {}).get(s, 1) for s in SERVICES}
    for service, n in counts.items():
        if not 1 <= n <= 64:
            raise AKError(f"--{service}s must be between 1 and 64 (got {n})")
    try:  # the services would each fail on a bad setting, over and over: say it once
        config.Settings.from_env()
        Retention.from_env()
        if http_addr:
            config.split_addr(http_addr)
        if dsn := db or os.environ.get(config.ENV_DB_DSN):
            config.check_db_dsn(dsn)
    except ValueError as e:
        raise AKError(str(e)) from None
    sync = os.environ.get(config.ENV_NATS_SYNC, "always")
    if sync not in natsserver.SYNC_CHOICES:
        raise AKError(f"{config.ENV_NATS_SYNC} must be always or default (got {sync!r})")
    env = dict(os.environ)
    if db:
        env[config.ENV_DB_DSN] = db
    addr = http_addr or env.get(config.ENV_HTTP_ADDR, config.DEFAULT_HTTP_ADDR)
    nats_url = nats_url or env.get(config.ENV_NATS_URL)
    if mode == "default" and not (nats_url and env.get(config.ENV_DB_DSN)):
        raise AKError(
            f"--mode default needs {config.ENV_NATS_URL} and {config.ENV_DB_DSN}; "
            "use --mode dev for an embedded NATS and SQLite"
        )
    data = config.data_home()
    data.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_home(data)
    _check_free(addr)
    sandbox_note = _sandbox_note(addr)
    host, port = config.split_addr(addr)
    require_tokens = access.tokens_on(mode, host, env)
    from akcore import secrets  # (cryptography: only for `ak up`)

    secrets.ensure_key_file(announce=mode != "dev")  # before the services that share it
    secrets.Sealer(*secrets.load_keys())  # a key that is no key: said once, here
    env[config.ENV_HTTP_ADDR] = addr
    env.setdefault(config.ENV_DB_DSN, config.default_db_dsn())
    nats_child, users = None, None
    stopping: list[bool] = []  # (Ctrl-C: see below)
    if not nats_url:
        users = natsauth.ensure_passwords(data / NATS_USERS)
        auth = natsauth.authorization_block(
            {s: json.dumps(natsauth.read_password(f)) for s, f in users.items()}
        )

        def start_nats(port: int) -> tuple[subprocess.Popen[bytes], str]:
            return natsserver.start(
                data / "nats",
                port,
                log_file=data / "nats-server.log",
                sync=sync,
                auth=auth,
                cancelled=lambda: bool(stopping),
                keep_fds=(lock,),
                with_parent=True,
                # (free until the ingress listens: the kernel may offer it to NATS)
                avoid_ports=(port,),
            )

        nats_port = int(env.get(config.ENV_NATS_PORT, "0"))
        if nats_port == port:
            raise AKError(
                f"{config.ENV_NATS_PORT}={nats_port} is the HTTP port too: pick another "
                f"for one of them ({config.ENV_HTTP_ADDR} or --http-addr)"
            )
        nats_proc, nats_url = start_nats(nats_port)
        # Supervised as the services are: restarted on the same port (they reconnect).
        nats_port = urlsplit(nats_url).port or 0
        nats_child = Child("nats-server", lambda: start_nats(nats_port)[0], nats_proc)
        nats_child.started = time.monotonic()
        nats_note = (
            f"{nats_url} (embedded, JetStream in {data / 'nats'}; "
            f"a user per service, passwords in {data / NATS_USERS})"
        )
    else:
        nats_note = ", ".join(_without_credentials(u) for u in nats_url.split(","))
    env[config.ENV_NATS_URL] = nats_url
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    cli_url = _cli_url(env, url, host, port)
    hint = _cli_hint(env, cli_url)
    cli_token = ""
    if require_tokens:
        env[config.ENV_AUTH_TOKENS] = "on"
        tokens_note, cli_token = access.bootstrap(env, data, cli_url)
        tokens_note = "on: " + tokens_note
    else:
        env[config.ENV_AUTH_TOKENS] = "off"
        tokens_note = (
            f"OFF (dev mode on loopback: {_who_may_call()}; "
            f"{config.ENV_AUTH_TOKENS}=on requires tokens)"
        )
    say(f"autokitteh ({mode} mode), pid {os.getpid()}")
    say(f"HTTP:      {url}{hint}")
    say(f"Web UI:    {url}/ui" + (" (log in with an API token)" if require_tokens else ""))
    say(f"NATS:      {nats_note}")
    say(f"Database:  {_without_password(env[config.ENV_DB_DSN])}")
    say(f"Data home: {data}")
    say(f"API tokens: {tokens_note}")
    say(f"Sandbox:   {sandbox_note}")

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    envs = {s: env if users is None else _service_env(env, s, users[s]) for s in SERVICES}
    children = [Child(s, _service(s, envs[s], lock)) for s in SERVICES for _ in range(counts[s])]
    for c in children:
        c.start()
    supervised = ([nats_child] if nats_child else []) + children
    running = ", ".join(
        s if counts[s] == 1 else f"{s} x{counts[s]}"
        for s in ("ingress", "dispatcher", "runner", "store")
    )
    try:
        if _wait_ready(url, supervised, stopping):
            say(f"ready: serving on {url} ({running})")
            if cli_token and (why := access.refused(url, cli_token)):
                say(
                    f"the CLI's token is refused by this stack ({why.split(':')[0]}): `ak` "
                    "commands will get 401. To get back in, stop and start once with a new "
                    "token, AK_TOKEN=akt_$(openssl rand -hex 32) ak up ..., then store it "
                    "with ak auth set-token (docs/cli.md)"
                )
        while not stopping:
            for c in supervised:
                c.check()
            time.sleep(0.2)
    finally:
        say("stopping")
        _stop_all([c.proc for c in children if c.proc], nats_child.proc if nats_child else None)
        say("stopped")


def _cli_url(env: dict[str, str], url: str, host: str, port: int) -> str:
    """The URL a CLI on this machine calls the stack by, whose entry gets its token: the
    setting when there is one, else the default URL when that reaches the stack (listening
    on loopback or every address, at the default port), else the stack's own URL."""
    if env.get(config.ENV_SERVICE_URL):
        return env[config.ENV_SERVICE_URL]
    default = urlsplit(config.DEFAULT_SERVICE_URL)
    if port == default.port and host in ("0.0.0.0", "", "127.0.0.1", "localhost"):
        return config.DEFAULT_SERVICE_URL
    return url


def _cli_hint(env: dict[str, str], cli_url: str) -> str:
    """What to add to the HTTP line so that a CLI finds this stack: a CLI calls
    http://localhost:9980 unless told, so say how to tell it when that is not this stack."""
    if config.ENV_SERVICE_URL in env or cli_url == config.DEFAULT_SERVICE_URL:
        return ""
    return f" (for ak: {config.ENV_SERVICE_URL}={cli_url})"


def _who_may_call() -> str:
    """Who may call a tokens-off API: its user alone where the ingress can tell (Linux),
    and then handlers too unless they run as users of their own (the sandbox)."""
    if not Path("/proc/net/tcp").exists():
        return "anyone on this machine can call the API"
    me = f"only user id {os.geteuid()} (this user) or root can call the API"
    if config.Settings.from_env().sandbox and os.geteuid() == 0:
        return me
    return f"{me}, and handlers run as this user: they can call it too"


def _sandbox_note(http_addr: str) -> str:
    """How handlers are boxed in (the runner's settings, checked above). Puts up the network
    fence the runners put up too, so that this says what handlers can reach, and a fence
    that is required and cannot be put up stops ``ak up`` before anything starts."""
    settings = config.Settings.from_env()
    parts = [f"memory {settings.worker_memory_mb} MiB"] if settings.worker_memory_mb else []
    if settings.session_timeout:
        parts.append(f"session timeout {settings.session_timeout} s")
    limits = f"; limits: {', '.join(parts)}" if parts else ""
    if not settings.sandbox:
        return f"off ({config.ENV_SANDBOX}=off): handlers run as this user{limits}"
    if os.geteuid() != 0:
        return (
            "handlers run as this user: `ak up` is not root, so workers cannot get users "
            f"of their own{limits}"
        )
    if settings.worker_memory_mb:
        groups, no_groups = cgroups.WorkerGroups.find()
        held = "held by the kernel" if groups else f"counted twice a second: {no_groups}"
        parts[0] += f" ({held})"
        limits = f"; limits: {', '.join(parts)}"
    first, last = settings.worker_uids
    env = config.worker_env(dict(os.environ), settings.worker_env)
    folder, why = netfence.hidden(settings.worker_python, env)
    where = f"this host's Unix sockets in {netfence.HIDDEN}"
    sockets = f"{where} hidden" if folder else f"{where} SEEN by handlers: {why}"
    return (
        f"workers run as user ids {first}-{last}{limits}; {sockets}; {_fence(settings, http_addr)}"
    )


def _fence(settings: config.Settings, http_addr: str) -> str:
    first, last = settings.worker_uids
    try:
        done = netfence.apply(settings.network_fence, first, last, http_addr, settings.host_ports)
    except netfence.FenceError as e:
        raise AKError(
            f"handlers cannot be fenced off this host: {e} ({config.ENV_NETWORK_FENCE}=required)"
        ) from None
    if done.mode == "off":
        if done.problem:
            return f"network: handlers may connect, BUT AN OLD FENCE STAYS: {done.problem}"
        if done.kept_for:
            return (
                f"network: {config.ENV_NETWORK_FENCE}=off, but the fence of these user ids "
                f"stays for the other stacks that use them (processes "
                f"{', '.join(map(str, done.kept_for))}): give this one other "
                f"{config.ENV_WORKER_UIDS}"
            )
        return f"network: handlers may connect to this host ({config.ENV_NETWORK_FENCE}=off)"
    if done.problem:
        return (
            f"network: handlers MAY CONNECT TO THIS HOST: {done.problem} (docs/security.md, item 7)"
        )
    return f"network: handlers reach no port of this host but {', '.join(map(str, done.ports))}"


def _service_env(env: dict[str, str], service: str, password_file: Path) -> dict[str, str]:
    """The environment of one service of the embedded NATS: its own user and password file
    (the password itself is in no process's environment)."""
    own = {k: v for k, v in env.items() if k != config.ENV_NATS_PASSWORD}
    own[config.ENV_NATS_USER] = service
    own[config.ENV_NATS_PASSWORD_FILE] = str(password_file)
    return own


def _without_credentials(url: str) -> str:
    u = urlsplit(url.strip())
    return u._replace(netloc=u.netloc.rpartition("@")[2]).geturl()


def _without_password(dsn: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(dsn).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable database URL)"


def _check_free(addr: str) -> None:
    host, port = config.split_addr(addr)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise AKError(
                f"cannot listen on {addr}: {e.strerror}. Is another program (or an `ak up` "
                f"of another data home) listening there? Pick another address with "
                f"--http-addr or {config.ENV_HTTP_ADDR}"
            ) from None


def _stop_all(
    procs: list[subprocess.Popen[bytes]], nats_proc: subprocess.Popen[bytes] | None
) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if nats_proc is not None:
        nats_proc.terminate()
        try:
            nats_proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            nats_proc.kill()
