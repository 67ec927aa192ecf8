"""The network fence: sandboxed handlers may not connect to this host itself.

Workers share the runner's network. Under ``ak up`` that is the host's, and services on it
that trust local connections (PostgreSQL with ``trust``, Redis without a password, a NATS
server without users, a cloud's metadata address) would be open to every handler. A root
runner with the sandbox on therefore installs an nftables table that refuses the worker
user ids (``AK_RUNNER__WORKER_UIDS``) every address of this host (loopback and its own
interfaces' addresses, whatever the port) and the link-local range where clouds serve
instance metadata and credentials, except DNS (port 53, for a resolver on loopback), the
stack's own HTTP port and the ports ``AK_RUNNER__HOST_PORTS`` names. Other machines (the
internet, the LAN) stay reachable.

The rules match packets by their socket's owner, in a chain that runs before any NAT
(a port a container publishes on loopback is refused too); packets without a socket (the
kernel's own) are never matched. The table is named after the user id range and replaced
whole, atomically, by each runner that starts, with the ports of every live runner of
that range (``put_up``). It is left in place when a runner stops, so a crash never opens
it; ``nft delete table inet NAME`` removes it.

It takes the ``nft`` command (Debian's ``nftables`` package) and CAP_NET_ADMIN; without them
``auto`` logs why handlers are not fenced and ``required`` refuses to start the runner.

Unix sockets with a path are no IP: those of this host's services are under ``/run``, which
workers do not see (``hidden``: a mount namespace of their own, CAP_SYS_ADMIN).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import config
from .config import private_dir

DNS_PORT = 53
# Where clouds serve instance metadata and credentials: the link-local range (AWS, GCP,
# Azure, OpenStack: 169.254.169.254, 169.254.170.2), Alibaba's, and AWS's and GCP's IPv6.
METADATA_V4 = "{ 169.254.0.0/16, 100.100.100.200 }"
METADATA_V6 = "{ fd00:ec2::254, fd20:ce::254 }"
NFT_TIMEOUT = 10.0
MISSING = "the nft command is missing (install Debian's nftables package)"
REGISTRY = Path("/run/autokitteh/fence")  # the ports each process of a range lets through


# Where this host's services keep their Unix sockets (Debian: PostgreSQL, MySQL, D-Bus,
# Docker; /var/run points there): sandboxed workers do not see it (``hidden``).
HIDDEN = "/run"
_CAP_SYS_ADMIN = 21


def hidden(worker_python: str = "", env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The directory sandboxed workers (and package installs) are not to see (``HIDDEN``;
    ``autokitteh._hide`` hides it), or "" and why not: hiding takes a mount namespace
    (CAP_SYS_ADMIN, and no AppArmor profile or seccomp filter refusing ``mount``, as a
    container's usually do: tried once, in a process of its own), and nothing the workers
    need may be in it: the data home, their interpreter, the temporary directory, or a path
    in ``env`` (the environment they start with: PATH, PYTHONPATH, SSL_CERT_FILE, ...)."""
    python = shutil.which(worker_python) or worker_python or sys.executable
    needed = {
        "the data home": str(config.data_home()),
        "the interpreter": sys.executable,
        "the workers' interpreter": python,
        "the temporary directory": tempfile.gettempdir(),
    }
    for name, value in (env or {}).items():
        for part in value.split(os.pathsep):
            if part.startswith("/"):
                needed[f"{name}={part}"] = part
    for what, path in needed.items():
        real = os.path.realpath(path)
        if real == HIDDEN or real.startswith(HIDDEN + "/"):
            return "", f"workers need {what}, which is in it"
    if not _may_admin():
        return "", "the runner may not make mount namespaces (no CAP_SYS_ADMIN)"
    if not os.path.isdir(HIDDEN):
        return "", f"there is no {HIDDEN}"
    return (HIDDEN, "") if not (why := _try_hiding()) else ("", why)


def _may_admin() -> bool:
    try:
        with open("/proc/self/status", "rb") as f:
            caps = next(line for line in f if line.startswith(b"CapEff:"))
        return bool(int(caps.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    except (OSError, StopIteration, ValueError, IndexError):
        return False


_TRY = "import runpy, sys; runpy.run_path(sys.argv[1])['hide'](sys.argv[2])"


def _try_hiding() -> str:
    """Hides ``HIDDEN`` in a process of its own, as workers will: "" when it worked, else
    what went wrong."""
    from autokitteh import _hide

    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _TRY, _hide.__file__, HIDDEN],
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"trying it failed: {e}"
    if done.returncode == 0:
        return ""
    lines = (done.stderr or "").strip().splitlines()
    return lines[-1][-300:] if lines else f"trying it exited with code {done.returncode}"


class FenceError(Exception):
    """The fence could not be put up; the message says why and what to do."""


def table_name(first: int, last: int) -> str:
    return f"autokitteh_workers_{first}_{last}"


def ruleset(first: int, last: int, ports: Iterable[int]) -> str:
    """The nftables script that (re)places the fence of user ids ``first``-``last``,
    letting ``ports`` (and DNS) on this host through."""
    name = table_name(first, last)
    uids = f"meta skuid {first}-{last}"
    allowed = ", ".join(str(p) for p in sorted({DNS_PORT, *ports}))
    refuse = "reject with icmpx admin-prohibited"
    return "\n".join(
        [
            # Declaring the table first makes the delete succeed when there is none; the
            # three lines are one transaction, so the old rules go as the new ones come.
            f"table inet {name}",
            f"delete table inet {name}",
            f"table inet {name} {{",
            "  chain output {",
            # raw priority: before NAT rewrites a local destination to a container's
            "    type filter hook output priority raw; policy accept;",
            f"    {uids} fib daddr type local meta l4proto {{ tcp, udp }}"
            f" th dport {{ {allowed} }} accept",
            f"    {uids} fib daddr type local {refuse}",
            # The kernel loops broadcast and multicast back to this host's own sockets.
            f"    {uids} fib daddr type {{ broadcast, multicast }} {refuse}",
            f"    {uids} ip daddr {METADATA_V4} {refuse}",
            f"    {uids} ip6 daddr {METADATA_V6} {refuse}",
            "  }",
            "}",
            "",
        ]
    )


def put_up(
    first: int, last: int, ports: Iterable[int], registry: Path = REGISTRY
) -> tuple[int, ...]:
    """Installs (or replaces) the fence, letting through ``ports`` and those of the other
    live processes that put up the fence of this range (several stacks on one host, a test
    suite beside a development stack: each registers its ports under ``registry`` by its
    process id, and a dead one's go at the next call). Returns the ports let through;
    raises FenceError saying why it could not."""
    mine = tuple(sorted(set(ports)))
    if shutil.which("nft") is None:
        raise FenceError(MISSING)
    try:
        # root's alone: a worker that could write there could let itself through
        folder = private_dir(registry / f"{first}-{last}")
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            me = str(os.getpid())
            # (when it started in a file of its own: older code reads the ports alone)
            (folder / f"{me}{STARTED}").write_text(_started(os.getpid()))
            (folder / me).write_text(",".join(map(str, mine)))
            allowed = _live_ports(folder)
            _nft(ruleset(first, last, allowed))
            return allowed
    except OSError as e:
        raise FenceError(f"cannot keep the fence's ports in {registry}: {e}") from None


def _live_ports(folder: Path) -> tuple[int, ...]:
    """The ports every live registered process lets through; the dead ones' entries go
    (and whatever else is there is passed over: only root writes in the folder)."""
    ports: set[int] = set()
    for _, text in _registered(folder):
        for p in text.split(","):
            if p.isascii() and p.isdigit() and 0 < int(p[:6]) < 65536:
                ports.add(int(p))
    return tuple(sorted(ports))


STARTED = ".started"  # PID.started: when the process that registered as PID started


def _registered(folder: Path) -> list[tuple[int, str]]:
    """The live processes registered in ``folder``, with their entries' text (their ports);
    removes the dead ones' entries. A process id that is running but started at another
    time than its entry says is another process's now, and a zombie's is dead: the
    registered process is gone either way."""
    live = []
    names = {entry.name for entry in folder.iterdir()}
    for name in names:
        if name.endswith(STARTED) and name.removesuffix(STARTED) not in names:
            (folder / name).unlink(missing_ok=True)  # (its entry went: older code's doing)
        if not (name.isascii() and name.isdigit() and len(name) <= 9):
            continue
        try:
            text = (folder / name).read_bytes()[:4096].decode("ascii", "replace")
        except OSError:  # (gone meanwhile: another process's take_down)
            continue
        try:
            started = (folder / f"{name}{STARTED}").read_bytes()[:64].decode("ascii", "replace")
        except OSError:
            started = ""  # an entry of older code: its process id alone
        pid = int(name)
        now = _started(pid)  # "" when not running (gone, or a zombie)
        if not now or (started.strip() and started.strip() != now):
            (folder / name).unlink(missing_ok=True)
            (folder / f"{name}{STARTED}").unlink(missing_ok=True)
            continue
        live.append((pid, text))
    return live


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), or "" if it is not running
    (not there, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    # the command's name, in parentheses, may hold anything: the fields follow its last ")"
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) <= 19 or fields[0] in (b"Z", b"X"):
        return ""
    return fields[19].decode()


def take_down(first: int, last: int, registry: Path = REGISTRY) -> list[int]:
    """Removes the fence of that range if there is one (a runner with the fence off would
    otherwise find an earlier runner's still holding), unless other live processes put it
    up: it stays for them, and their process ids are returned. Raises FenceError if it
    cannot be removed."""
    if shutil.which("nft") is None:
        return []  # (nothing can have put one up)
    folder = registry / f"{first}-{last}"
    try:
        keeping = [pid for pid, _ in _registered(folder) if pid != os.getpid()]
    except FileNotFoundError:
        keeping = []
    except OSError as e:
        raise FenceError(f"cannot read the fence's ports in {registry}: {e}") from None
    if keeping:
        return keeping
    name = table_name(first, last)
    _nft(f"table inet {name}\ndelete table inet {name}\n")
    return []


def _nft(script: str) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise FenceError(MISSING)
    try:
        done = subprocess.run(
            [nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FenceError(f"nft could not be run: {e}") from None
    if done.returncode != 0:
        said = " ".join(done.stderr.split())[:300] or f"exit code {done.returncode}"
        raise FenceError(f"nft refused the rules: {said}")


@dataclass(frozen=True)
class Outcome:
    """What ``apply`` did: the fence is up (``ports`` let through), or why it is not."""

    mode: str  # the setting: auto, required or off
    ports: tuple[int, ...] = ()  # up: the ports of this host handlers still reach
    problem: str = ""  # not up (auto), or not taken down (off): why
    kept_for: tuple[int, ...] = ()  # off, but the fence stays for these live processes


def apply(mode: str, first: int, last: int, http_addr: str, extra: Iterable[int]) -> Outcome:
    """Puts up the fence of user ids ``first``-``last`` as the setting ``mode`` says (off:
    takes an earlier one down); raises FenceError when it is ``required`` and cannot."""
    if mode == "off":
        try:
            return Outcome(mode, kept_for=tuple(take_down(first, last)))
        except FenceError as e:
            return Outcome(mode, problem=str(e))
    try:
        return Outcome(mode, ports=put_up(first, last, allowed_ports(http_addr, extra)))
    except FenceError as e:
        if mode == "required":
            raise
        return Outcome(mode, problem=str(e))


def allowed_ports(http_addr: str, extra: Iterable[int]) -> tuple[int, ...]:
    """The ports of this host handlers may still reach: DNS, the stack's HTTP port (its
    webhooks; its API asks for a token, or refuses handlers when tokens are off) and
    ``extra``."""
    ports = {DNS_PORT, *extra}
    port = http_addr.rpartition(":")[2]
    if port.isdigit():
        ports.add(int(port))
    return tuple(sorted(ports))
