"""Settings and directories, read from the environment once per process.

Environment variable names follow AutoKitteh where it has one (``AK_HTTP__ADDR``,
``AK_HTTP__SERVICE_URL``, ``AK_DB__DSN``, ``XDG_*``); the rest are ours.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

ENV_HTTP_ADDR = "AK_HTTP__ADDR"  # where ingress listens
ENV_SERVICE_URL = "AK_HTTP__SERVICE_URL"  # where the CLI sends requests
ENV_DB_DSN = "AK_DB__DSN"  # SQLAlchemy URL of the store
ENV_NATS_URL = "AK_NATS_URL"  # external NATS; when unset `ak up` embeds one
ENV_NATS_USER = "AK_NATS__USER"  # the service's NATS user (see akcore.natsauth)
ENV_NATS_PASSWORD = "AK_NATS__PASSWORD"  # its password, or:
ENV_NATS_PASSWORD_FILE = "AK_NATS__PASSWORD_FILE"  # a file that holds it
ENV_NATS_PORT = "AK_NATS__PORT"  # port of the embedded nats-server (0 = pick a free one)
ENV_NATS_SYNC = "AK_NATS__SYNC"  # the embedded nats-server's sync_interval: always or default
ENV_RUNNER_CONCURRENCY = "AK_RUNNER__CONCURRENCY"
ENV_RUNNER_MAX_WAITING = "AK_RUNNER__MAX_WAITING"
ENV_RUNNER_PARK_AFTER = "AK_RUNNER__PARK_AFTER"  # seconds of waiting before parking, or off
PARK_AFTER = 30.0  # its default
ENV_FORK_WORKERS = "AK_RUNNER__FORK_WORKERS"
ENV_WORKER_PYTHON = "AK_WORKER_PYTHON"
ENV_WARM_WORKERS = "AK_RUNNER__WARM_WORKERS"
ENV_WORKER_SESSIONS = "AK_RUNNER__WORKER_SESSIONS"
ENV_FILTER_BUDGET_MS = "AK_DISPATCHER__FILTER_BUDGET_MS"  # CPU time of one CEL filter
ENV_EVALUATOR_MEMORY_MB = "AK_DISPATCHER__EVALUATOR_MEMORY_MB"  # of one; 0 = no limit
ENV_JOBS_MAX_ATTEMPTS = "AK_JOBS__MAX_ATTEMPTS"
ENV_JOBS_ACK_WAIT = "AK_JOBS__ACK_WAIT"  # seconds before a dead holder's message moves on
ENV_NATS_REPLICAS = "AK_NATS__REPLICAS"  # copies of each stream a JetStream cluster keeps
ENV_WEBHOOK_TIMEOUT = "AK_WEBHOOKS__RESPONSE_TIMEOUT"  # seconds a sync webhook waits
ENV_LOG_LEVEL = "AK_LOG_LEVEL"  # the services' log level: DEBUG, INFO (default), WARNING, ...
ENV_JOURNAL_MAX_RECORDS = "AK_RUNNER__JOURNAL_MAX_RECORDS"
ENV_JOURNAL_MAX_BYTES = "AK_RUNNER__JOURNAL_MAX_BYTES"
ENV_SANDBOX = "AK_RUNNER__SANDBOX"  # auto (workers boxed in when the runner is root) or off
ENV_WORKER_UIDS = "AK_RUNNER__WORKER_UIDS"  # the user ids workers run as: FIRST-LAST
ENV_NETWORK_FENCE = "AK_RUNNER__NETWORK_FENCE"  # auto, required or off (akcore.netfence)
ENV_HOST_PORTS = "AK_RUNNER__HOST_PORTS"  # ports of this host fenced handlers may still reach
ENV_WORKER_MEMORY_MB = "AK_RUNNER__WORKER_MEMORY_MB"  # address space of one worker; 0 = none
ENV_WORKER_PROCESSES = "AK_RUNNER__WORKER_PROCESSES"  # processes of one worker's user
ENV_WORKER_FILES = "AK_RUNNER__WORKER_FILES"  # open files of each process of a worker
ENV_WORKER_TEMP = "AK_RUNNER__WORKER_TEMP"  # memory (a /tmp of each worker's own) or host
ENV_SESSION_TIMEOUT = "AK_RUNNER__SESSION_TIMEOUT"  # seconds an attempt may run; 0 = none
ENV_ECHO_PRINTS = "AK_RUNNER__ECHO_PRINTS"  # also write handler output to the runner's log
ENV_WORKER_ENV = "AK_RUNNER__WORKER_ENV"  # names of the runner's variables workers also get
ENV_PACKAGES_TIMEOUT = "AK_RUNNER__PACKAGES_TIMEOUT"  # seconds one environment's install may take
# memory the processes installing one environment's packages may use together; 0 = no limit
ENV_PACKAGES_MEMORY_MB = "AK_RUNNER__PACKAGES_MEMORY_MB"
ENV_PACKAGES_BUILDS = "AK_RUNNER__PACKAGES_BUILDS"  # environments one runner installs at once
# room package installs leave on the disks they write to (the data home's); 0 = not watched
ENV_PACKAGES_MIN_FREE_MB = "AK_RUNNER__PACKAGES_MIN_FREE_MB"
ENV_BUILD_CACHE_MB = "AK_RUNNER__BUILD_CACHE_MB"  # disk the unpacked builds may take
ENV_BUILD_CACHE_IDLE = "AK_RUNNER__BUILD_CACHE_IDLE"  # seconds an unused build is kept, or off
BUILD_CACHE_IDLE = 86400.0  # its default: a day
ENV_VENVS_MB = "AK_RUNNER__VENVS_MB"  # disk the projects' environments may take
ENV_VENVS_IDLE = "AK_RUNNER__VENVS_IDLE"  # seconds an unused project environment is kept, or off
ENV_TIMEOUT = "AK_TIMEOUT"
ENV_EVENT_LOOP = "AK_EVENT_LOOP"  # uvloop (default when installed) or asyncio
ENV_AUTH_TOKENS = "AK_AUTH__TOKENS"  # on (default) or off: /api calls need an API token
ENV_AUTH_BOOTSTRAP = "AK_AUTH__BOOTSTRAP_TOKEN_FILE"  # a first token (or its digest)
ENV_TOKEN = "AK_TOKEN"  # the CLI's API token, over its credentials file
# What one HTTP client may take of an ingress (HttpLimits).
ENV_HTTP_MAX_HEADER_BYTES = "AK_HTTP__MAX_HEADER_BYTES"
ENV_HTTP_MAX_HEADERS = "AK_HTTP__MAX_HEADERS"
ENV_HTTP_REQUEST_TIMEOUT = "AK_HTTP__REQUEST_TIMEOUT"
ENV_HTTP_IDLE_TIMEOUT = "AK_HTTP__IDLE_TIMEOUT"
ENV_HTTP_MAX_CONNECTIONS = "AK_HTTP__MAX_CONNECTIONS"
ENV_HTTP_MAX_API_BODY = "AK_HTTP__MAX_API_BODY"
ENV_HTTP_WEBHOOK_PROJECT_MB = "AK_HTTP__WEBHOOK_PROJECT_MB"  # MiB/s of webhooks per project
# Proxies in front of ingress whose X-Forwarded-For is believed (addresses or networks).
ENV_HTTP_TRUSTED_PROXIES = "AK_HTTP__TRUSTED_PROXIES"

DEFAULT_HTTP_ADDR = "127.0.0.1:9980"
# User ids no account uses, one per worker process at a time (see services/runner/sandbox.py).
DEFAULT_WORKER_UIDS = (820000, 829999)
# The highest worker user id: the ids above 2**31 are left to the runner's own processes
# (the killers of sandbox.kill_user, one id each).
MAX_WORKER_UID = 2**30 - 1
DEFAULT_SERVICE_URL = "http://localhost:9980"

# Settings that belong to the system, never to user code: stripped from a worker's environment.
INTERNAL_ENV_PREFIXES = ("AK_", "OTEL_")


def private_dir(path: Path) -> Path:
    """``path``, made if need be: a directory of this user's that no one else can write to
    (where a root service keeps what a worker's user must not make first or change);
    raises OSError saying what is wrong."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if info.st_uid != os.geteuid() or not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o022:
        raise OSError(f"{path} must be a directory of this user's that no one else can write to")
    return path


def config_home() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "autokitteh"


def data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "autokitteh"


def default_venv() -> Path:
    """The Python environment of projects without a requirements.txt."""
    return data_home() / "venv"


def project_venvs() -> Path:
    """Where the environments of projects with a requirements.txt live, one per file hash."""
    return data_home() / "venvs"


# A project's own package list, next to its manifest; gives it its own Python environment.
REQUIREMENTS_FILE = "requirements.txt"


def python_requirements() -> Path:
    """The user-editable package list of the default Python environment."""
    return config_home() / "python-requirements.txt"


def default_db_dsn() -> str:
    return f"sqlite:///{data_home() / 'autokitteh.sqlite'}"


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP client may take of an ingress; over a limit it gets an answer saying
    which (431, 408, 503, 413) and its connection is closed."""

    max_header_bytes: int = 64 * 1024  # the request line and headers together
    max_headers: int = 200
    request_timeout: int = 30  # seconds for a whole request (head and body) to arrive
    idle_timeout: int = 5  # seconds a connection may wait for its next request
    max_connections: int = 1000  # open at once, per ingress process
    max_api_body: int = 8 * 1024 * 1024  # an /api request (the NATS message limit of `ak up`)
    webhook_project_mb: int = 8  # MiB a second of webhook requests per project (0: no limit)
    # the networks of the proxies whose X-Forwarded-For names the client (none: the peer is)
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> HttpLimits:
        return cls(
            trusted_proxies=_networks(ENV_HTTP_TRUSTED_PROXIES),
            max_header_bytes=_count(ENV_HTTP_MAX_HEADER_BYTES, cls.max_header_bytes, 1024),
            max_headers=_count(ENV_HTTP_MAX_HEADERS, cls.max_headers, 10),
            request_timeout=_count(ENV_HTTP_REQUEST_TIMEOUT, cls.request_timeout, 1),
            idle_timeout=_count(ENV_HTTP_IDLE_TIMEOUT, cls.idle_timeout, 1),
            max_connections=_count(ENV_HTTP_MAX_CONNECTIONS, cls.max_connections, 1),
            max_api_body=_count(ENV_HTTP_MAX_API_BODY, cls.max_api_body, 64 * 1024),
            webhook_project_mb=_count(ENV_HTTP_WEBHOOK_PROJECT_MB, cls.webhook_project_mb, 0),
        )


@dataclass(frozen=True)
class Settings:
    """What every service needs to find the others."""

    nats_url: str
    nats_user: str = ""  # none: the server needs no credentials (or the URL holds them)
    nats_password: str = field(default="", repr=False)
    http_addr: str = DEFAULT_HTTP_ADDR
    db_dsn: str = ""
    runner_concurrency: int = 32  # sessions running code at once, per runner
    runner_max_waiting: int = 200  # and sessions waiting (sleep, next_event, ...) on top
    park_after: float = PARK_AFTER  # seconds a session waits before it parks (0: never)
    worker_python: str = ""
    warm_workers: int = 2  # spare worker processes a runner keeps started, per interpreter
    worker_sessions: int = 1000  # sessions of one project a worker process runs, one by one
    fork_workers: bool = True  # workers forked by a fork server (Linux), not started anew
    max_attempts: int = 10  # deliveries of a session's job before it ends in ERROR
    journal_max_records: int = 50_000  # one session's journal, at most
    journal_max_bytes: int = 50 * 1024 * 1024
    filter_budget_ms: int = 100  # CPU time one trigger or subscription filter may take
    # The address space of one filter evaluator (``evaluator_memory_mb()``; each evaluator
    # reads it from the environment it inherits from its dispatcher).
    evaluator_memory_mb: int = 1024
    auth_tokens: bool = True  # /api calls need an API token (off only on loopback)
    auth_bootstrap_file: str = ""  # the store keeps the token (or digest) of this file
    http: HttpLimits = HttpLimits()
    sandbox: bool = True  # workers run as users of their own when the runner is root
    worker_uids: tuple[int, int] = DEFAULT_WORKER_UIDS  # first and last, inclusive
    network_fence: str = "auto"  # keep sandboxed handlers off this host: auto, required, off
    host_ports: tuple[int, ...] = ()  # ports of this host they may still reach (and DNS, HTTP)
    worker_memory_mb: int = 1024
    worker_processes: int = 64
    worker_files: int = 1024
    worker_temp: str = "memory"  # sandboxed workers' /tmp and /var/tmp: their own, or the host's
    session_timeout: int = 0
    echo_prints: bool = False
    worker_env: tuple[str, ...] = ()
    packages_timeout: int = 1800  # seconds installing one environment's packages may take
    packages_memory_mb: int = 4096  # what installing them may use, all processes together
    packages_builds: int = 2  # environments one runner installs at once; the others wait
    packages_min_free_mb: int = 2048  # room installs leave on the data home's disk
    build_cache_mb: int = 1024  # the runner's unpacked builds, at most (but those in use)
    build_cache_idle: float = BUILD_CACHE_IDLE  # an unused build is removed after (0: never)
    venvs_mb: int = 10240  # the projects' environments, at most (but those in use)
    venvs_idle: float = 0.0  # an unused project environment is removed after (0: never)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            nats_url=os.environ.get(ENV_NATS_URL, "nats://127.0.0.1:4222"),
            nats_user=os.environ.get(ENV_NATS_USER, ""),
            nats_password=_nats_password(),
            http_addr=os.environ.get(ENV_HTTP_ADDR, DEFAULT_HTTP_ADDR),
            db_dsn=os.environ.get(ENV_DB_DSN) or default_db_dsn(),
            runner_concurrency=_count(ENV_RUNNER_CONCURRENCY, 32, 1),
            runner_max_waiting=_count(ENV_RUNNER_MAX_WAITING, 200, 0),
            park_after=_seconds_or_off(ENV_RUNNER_PARK_AFTER, PARK_AFTER),
            worker_python=os.environ.get(ENV_WORKER_PYTHON, ""),
            warm_workers=_count(ENV_WARM_WORKERS, 2, 0),
            worker_sessions=_count(ENV_WORKER_SESSIONS, 1000, 1),
            fork_workers=os.environ.get(ENV_FORK_WORKERS, "1") not in ("0", "false", "no"),
            max_attempts=_count(ENV_JOBS_MAX_ATTEMPTS, 10, 1),
            journal_max_records=_count(ENV_JOURNAL_MAX_RECORDS, 50_000, 100),
            journal_max_bytes=_count(ENV_JOURNAL_MAX_BYTES, 50 * 1024 * 1024, 1024 * 1024),
            filter_budget_ms=_count(ENV_FILTER_BUDGET_MS, 100, 1),
            evaluator_memory_mb=evaluator_memory_mb(),
            auth_tokens=_switch(ENV_AUTH_TOKENS, True),
            auth_bootstrap_file=os.environ.get(ENV_AUTH_BOOTSTRAP, ""),
            http=HttpLimits.from_env(),
            sandbox=_choice(ENV_SANDBOX, ("auto", "off")) == "auto",
            worker_uids=_uid_range(os.environ.get(ENV_WORKER_UIDS, "")),
            network_fence=_choice(ENV_NETWORK_FENCE, ("auto", "required", "off")),
            host_ports=_ports(ENV_HOST_PORTS),
            worker_memory_mb=_count(ENV_WORKER_MEMORY_MB, 1024, 0),
            worker_processes=_count(ENV_WORKER_PROCESSES, 64, 1),
            worker_files=_count(ENV_WORKER_FILES, 1024, 64),
            worker_temp=_choice(ENV_WORKER_TEMP, ("memory", "host")),
            session_timeout=_count(ENV_SESSION_TIMEOUT, 0, 0),
            echo_prints=_switch(ENV_ECHO_PRINTS, False),
            worker_env=tuple(n for n in os.environ.get(ENV_WORKER_ENV, "").split(",") if n),
            packages_timeout=_count(ENV_PACKAGES_TIMEOUT, 1800, 10),
            packages_memory_mb=_count(ENV_PACKAGES_MEMORY_MB, 4096, 0),
            packages_builds=_count(ENV_PACKAGES_BUILDS, 2, 1),
            packages_min_free_mb=_count(ENV_PACKAGES_MIN_FREE_MB, 2048, 0),
            build_cache_mb=_count(ENV_BUILD_CACHE_MB, 1024, 64),
            build_cache_idle=_seconds_or_off(ENV_BUILD_CACHE_IDLE, BUILD_CACHE_IDLE),
            venvs_mb=_count(ENV_VENVS_MB, 10240, 1),
            venvs_idle=_seconds_or_off(ENV_VENVS_IDLE, 0.0),
        )._checked()

    def _checked(self) -> Settings:
        """Refuses the settings read where a module is imported (not kept here): a bad one
        is said once, as the service starts, not as a traceback."""
        job_ack_wait()
        nats_replicas()
        webhook_timeout()
        log_level()
        _choice(ENV_EVENT_LOOP, ("uvloop", "asyncio"))
        try:
            split_addr(self.http_addr)
        except ValueError:
            raise ValueError(
                f"{ENV_HTTP_ADDR} must be HOST:PORT (127.0.0.1:9980, :9980), not {self.http_addr!r}"
            ) from None
        return self


T = TypeVar("T")


def or_default(read: Callable[[], T], default: T) -> T:
    """``read()``, or ``default`` when its setting is malformed: for a value read as a module
    is imported, whose setting ``Settings.from_env`` refuses with its message as the
    service starts."""
    try:
        return read()
    except ValueError:
        return default


def job_ack_wait() -> float:
    """``AK_JOBS__ACK_WAIT``: how long a message held by a process that died waits."""
    return _seconds(ENV_JOBS_ACK_WAIT, 15.0, least=1.0)


def nats_replicas() -> int:
    """``AK_NATS__REPLICAS``: how many copies of each stream a JetStream cluster keeps."""
    n = _count(ENV_NATS_REPLICAS, 1, 1)
    if n > 5:  # JetStream's own limit
        raise ValueError(f"{ENV_NATS_REPLICAS} must be a whole number from 1 to 5, not {n}")
    return n


def webhook_timeout() -> float:
    """``AK_WEBHOOKS__RESPONSE_TIMEOUT``: how long a sync webhook's request waits."""
    return _seconds(ENV_WEBHOOK_TIMEOUT, 30.0, least=1.0)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Names Python's logging also takes, which AK_LOG_LEVEL was given as is before it was checked.
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL", "NOTSET": "DEBUG"}


def log_level() -> str:
    """``AK_LOG_LEVEL``: one of ``LOG_LEVELS`` (any case; WARN is WARNING, FATAL is
    CRITICAL, NOTSET is DEBUG: what ``logging`` takes)."""
    text = os.environ.get(ENV_LOG_LEVEL, "").strip().upper() or "INFO"
    text = _LEVEL_ALIASES.get(text, text)
    if text not in LOG_LEVELS:
        raise ValueError(
            f"{ENV_LOG_LEVEL} must be one of {', '.join(LOG_LEVELS)}, not "
            f"{os.environ.get(ENV_LOG_LEVEL, '')!r}"
        )
    return text


def evaluator_memory_mb() -> int:
    """``AK_DISPATCHER__EVALUATOR_MEMORY_MB``: the memory of one filter evaluator, in MiB."""
    return _count(ENV_EVALUATOR_MEMORY_MB, 1024, 0)


def _nats_password() -> str:
    """From ``AK_NATS__PASSWORD`` or the file ``AK_NATS__PASSWORD_FILE`` names."""
    given, path = os.environ.get(ENV_NATS_PASSWORD, ""), os.environ.get(ENV_NATS_PASSWORD_FILE)
    if not path:
        return given
    if given:
        raise ValueError(f"set {ENV_NATS_PASSWORD} or {ENV_NATS_PASSWORD_FILE}, not both")
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise ValueError(
            f"{ENV_NATS_PASSWORD_FILE}: cannot read {path}: {e.strerror or e}"
        ) from None


def _count(name: str, default: int, least: int) -> int:
    """A whole-number setting from the environment, at least ``least``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < least:
        raise ValueError(f"{name} must be a whole number of at least {least}, not {text!r}")
    return int(text)


def _networks(name: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or networks (``10.0.0.0/8``) from the environment."""
    import ipaddress

    found = []
    for part in os.environ.get(name, "").split(","):
        if not part.strip():
            continue
        try:
            found.append(str(ipaddress.ip_network(part.strip(), strict=False)))
        except ValueError:
            raise ValueError(
                f"{name} must list IP addresses or networks (10.0.0.5, 10.0.0.0/8), comma-"
                f"separated; {part.strip()!r} is neither"
            ) from None
    return tuple(found)


def _seconds(name: str, default: float, least: float) -> float:
    """A number of seconds, at least ``least``; unset: ``default``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not least <= value < 1e9:  # (also refuses nan and inf)
        raise ValueError(f"{name} must be a number of seconds of at least {least:g}, not {text!r}")
    return value


def _seconds_or_off(name: str, default: float) -> float:
    """A number of seconds (more than 0), or ``off`` or ``0``: 0; unset: ``default``."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text == "off":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value == 0:
        return 0.0
    if not 0 < value < 1e9:  # (also refuses nan and inf)
        raise ValueError(
            f"{name} must be a number of seconds more than 0, or off (or 0), not {text!r}"
        )
    return value


def _switch(name: str, default: bool) -> bool:
    """An on/off setting from the environment."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text not in ("on", "off", "true", "false", "1", "0"):
        raise ValueError(f"{name} must be on or off, not {text!r}")
    return text in ("on", "true", "1")


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (an address or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _choice(name: str, choices: tuple[str, ...]) -> str:
    """A setting that is one of ``choices`` (the first when unset)."""
    text = os.environ.get(name, "").strip().lower() or choices[0]
    if text not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {text!r}")
    return text


def _uid_range(text: str) -> tuple[int, int]:
    """``FIRST-LAST`` user ids (at least 2 of them, from 1000 to ``MAX_WORKER_UID``)."""
    if not text.strip():
        return DEFAULT_WORKER_UIDS
    first, _, last = text.strip().partition("-")
    if not (first.isdigit() and last.isdigit()) or not (
        1000 <= int(first) < int(last) <= MAX_WORKER_UID
    ):
        raise ValueError(
            f"{ENV_WORKER_UIDS} must be FIRST-LAST user ids from 1000 to {MAX_WORKER_UID}, "
            f"not {text!r}"
        )
    return int(first), int(last)


def _ports(name: str) -> tuple[int, ...]:
    """A comma-separated list of TCP/UDP port numbers (1-65535)."""
    text = os.environ.get(name, "")
    ports = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and 1 <= int(p) <= 65535 for p in ports):
        raise ValueError(f"{name} must be port numbers separated by commas, not {text!r}")
    return tuple(sorted({int(p) for p in ports}))


def check_db_dsn(dsn: str) -> None:
    """Raises ValueError when ``dsn`` is no database URL the store can use (a typo in its
    scheme, a driver not installed). The message leaves the URL out: it may hold a
    password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(dsn)
    except (ArgumentError, ValueError):
        raise ValueError(f"{ENV_DB_DSN} is not a database URL: {DB_DSN_FORMS}") from None
    try:
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise NoSuchModuleError(url.drivername)
        url.get_dialect().import_dbapi()  # (its driver: installed?)
    except (NoSuchModuleError, ImportError):
        raise ValueError(
            f"{ENV_DB_DSN} names a database this store cannot use ({url.drivername!r}): "
            f"{DB_DSN_FORMS}"
        ) from None


DB_DSN_FORMS = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


def split_addr(addr: str) -> tuple[str, int]:
    """Splits ``host:port`` (an empty host means all interfaces)."""
    host, _, port = addr.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"invalid address {addr!r}: expected host:port")
    return (host or "0.0.0.0"), int(port)


# What a handler may need of the runner's environment (locale, time zone, certificates,
# proxies, the Python path); everything else stays with the runner.
KEPT_ENV = frozenset(
    {
        "PATH",
        "HOME",  # a sandboxed worker cannot write there: files go to TMPDIR (tempfile)
        "TMPDIR",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "PYTHONPATH",
        "PYTHONUTF8",
        "PYTHONIOENCODING",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)


def worker_env(environ: dict[str, str], also: tuple[str, ...]) -> dict[str, str]:
    """The environment a worker starts with: ``KEPT_ENV``, ``LC_*`` and the names the
    operator listed in ``also`` (AK_RUNNER__WORKER_ENV), never one of the system's own."""
    env = {k: v for k, v in environ.items() if k in KEPT_ENV or k.startswith("LC_")}
    allowed = (k for k in also if k in environ and not k.startswith(INTERNAL_ENV_PREFIXES))
    env.update((k, environ[k]) for k in allowed)
    return env
