"""Ingress service: serves HTTP with uvicorn until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket

import uvicorn
from akcore import bus, keycheck, service, tracing
from akcore.config import (
    ENV_AUTH_TOKENS,
    ENV_HTTP_MAX_CONNECTIONS,
    HttpLimits,
    Settings,
    is_loopback,
    split_addr,
)
from akcore.errors import AKError
from akcore.secrets import load_keyring

from .app import create_app
from .lookups import KnownWebhooks, WebhookLookups
from .protocol import LimitedProtocol

log = logging.getLogger(__name__)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


# Open files the process needs besides its HTTP connections (NATS, logs, the event loop).
SPARE_FILES = 256


def fit_open_files(limits: HttpLimits) -> None:
    """Raises this process's open-file limit (often 1024) to fit ``max_connections``, up to
    the hard limit: beyond it a new connection would fail to be accepted instead of getting
    a 503."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + SPARE_FILES
    if hard != resource.RLIM_INFINITY and hard < wanted:
        log.warning(
            "the open-file limit (%d) is below %s (%d) plus %d: lower it or raise `ulimit -Hn`",
            hard,
            ENV_HTTP_MAX_CONNECTIONS,
            limits.max_connections,
            SPARE_FILES,
        )
        wanted = hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


CHECK_FIRST = 5.0  # seconds the key check may hold listening up (akcore.keycheck)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    host, port = split_addr(settings.http_addr)
    if not settings.auth_tokens and not is_loopback(host):
        raise AKError(
            f"API tokens are off ({ENV_AUTH_TOKENS}=off) but ingress would listen on "
            f"{settings.http_addr}, which other machines can reach: turn tokens on, or "
            "listen on a loopback address such as 127.0.0.1"
        )
    fit_open_files(settings.http)
    nc = await bus.connect_service(settings, "ingress")
    await bus.wait_streams(nc.jetstream(), "ingress")
    await bus.serve_health(nc, "ingress")
    tel = tracing.Telemetry("ingress")
    tel.send_to_store(nc)
    # Read before serving: a restarted ingress accepts known webhooks while the store is down.
    lookups = WebhookLookups(nc, await KnownWebhooks.load(nc.jetstream()))
    await lookups.watch()
    keys = load_keyring()
    failed: list[AKError] = []  # the key check's verdict (it stops ingress)
    checking = asyncio.create_task(keycheck.watch(nc, keys, stop, failed))
    # Not listening before the verdict, while the store gives one soon (with the store
    # away, known webhooks are served and the check comes once it is back).
    await asyncio.wait({checking}, timeout=CHECK_FIRST)
    if failed:
        await tel.close()
        await bus.close(nc)
        raise failed[0]
    config = uvicorn.Config(
        create_app(
            nc, tel, lookups, settings.auth_tokens, settings.http, keys, settings.worker_uids
        ),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http=LimitedProtocol.with_limits(settings.http),
        ws="none",
        # The client is the socket's peer, never what a header says: who owns a loopback
        # connection (tokens off) and the refusal budgets are keyed on it, and uvicorn
        # would otherwise take X-Forwarded-For from any local process as the truth.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    # Our own loop handles SIGINT/SIGTERM (akcore.service); keep uvicorn from replacing them.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    # SO_REUSEPORT: several ingress processes can serve one address (`ak up --ingresses N`).
    service.settle_heap()
    task = asyncio.create_task(server.serve(sockets=[_listen(host, port)]))
    log.info("ingress listening on http://%s:%d", host, port)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await task
    stopper.cancel()
    checking.cancel()
    await tel.close()
    await bus.close(nc)
    if failed:
        raise failed[0]
