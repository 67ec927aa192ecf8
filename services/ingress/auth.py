"""Who calls ``/api``: the API token of the ``Authorization: Bearer`` header, checked
against the digests the store keeps (the raw token goes no further than this process)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from akcore import timefmt, tokens
from akcore.cache import StoreCache
from akcore.config import is_loopback
from akcore.errors import InvalidArgument, Unauthenticated
from akcore.ops import Cache
from nats.aio.client import Client

from . import peers
from .throttle import FailedTries

MSGPACK = "application/msgpack"
HOW_TO_GET_ONE = (
    "The CLI sends the token of `ak auth set-token <token>` (or of AK_TOKEN). "
    "`ak up` stores a first token for the CLI on the machine it runs on; "
    "`ak auth create-token` run there makes more (compose: the token of "
    "AK_AUTH__BOOTSTRAP_TOKEN_FILE)."
)


def host_name(host: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:80`` -> ``::1``)."""
    text = host.strip().lower()
    return text[1:].partition("]")[0] if text.startswith("[") else text.partition(":")[0]


@dataclass(frozen=True)
class Caller:
    """``token_id`` is "" when tokens are off (dev mode on loopback)."""

    token_id: str
    name: str
    created_at: str = ""
    expires_us: int = 0  # when its token stops being taken (0: never)
    projects: tuple[str, ...] = ()  # the project ids its token is limited to (none: every one)


DEV_CALLER = Caller(token_id="", name="dev (API tokens are off: dev mode on a loopback address)")


class Authenticator:
    """Checks tokens; a token the store knows is remembered for a few seconds (the CLI's
    polls would otherwise cost a store request each). Unknown ones are asked every time,
    within a budget of failures per client address (``FailedTries``)."""

    KEEP = 5.0

    def __init__(self, nc: Client, required: bool) -> None:
        self.nc, self.required = nc, required
        self.known = StoreCache(ttl=self.KEEP, kind=Cache.TOKENS)
        self.watching = False  # the store's change notices (a revoked token is forgotten)
        self.failures = FailedTries("requests with a missing or invalid API token")

    async def caller(
        self,
        authorization: str | None,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        headers: Mapping[str, str] | None = None,
        address: str | None = None,
    ) -> Caller:
        """The caller the header names; Unauthenticated without a token the store knows.
        With tokens off, the caller must be the server's own user (or root), as the
        connection ``client`` -> ``server`` shows: a handler (a sandbox user) or another
        account on the machine is refused; and the request must come from a program, not a
        web page (``_check_not_a_browser``). Failed tokens spend the budget of ``address``
        (the client's, ``clients.ClientAddresses``; by default ``client``'s)."""
        if not self.required:
            self._check_not_a_browser(headers or {})
            await self.check_local_user(client, server)
            return DEV_CALLER
        if address is None:  # (the budget's key: the client, behind trusted proxies too)
            address = client[0] if client else ""
        if not self._remembered(authorization):
            self.failures.check(address)
        try:
            return await self._token_caller(authorization)
        except Unauthenticated:
            self.failures.failed(address)
            raise

    async def check_local_user(
        self, client: tuple[str, int] | None, server: tuple[str, int] | None
    ) -> None:
        """Unauthenticated unless the connection comes from the server's own user or root
        (what a tokens-off server answers; the web UI checks it too)."""
        if peers.supported():  # (maybe a read of the whole socket table: off the event loop)
            await asyncio.to_thread(self._check_local_user, client, server)

    def _remembered(self, authorization: str | None) -> bool:
        """Whether the header's token was found good a moment ago (no store call needed)."""
        token = (authorization or "").partition(" ")[2].strip()
        return bool(token) and self.known.has("token.check", tokens.digest(token))

    async def _token_caller(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthenticated(f"missing API token. {HOW_TO_GET_ONE}")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                f"invalid authorization header: use `Authorization: Bearer <token>`. "
                f"{HOW_TO_GET_ONE}"
            )
        if not self.watching:
            self.watching = True
            await self.known.watch(self.nc)
        try:
            digest = tokens.digest(token)
            who = await self._check(digest)
        except Unauthenticated as e:
            if e.message.startswith("API token expired"):
                raise
            raise Unauthenticated(
                f"invalid API token: the server does not know it. {HOW_TO_GET_ONE}"
            ) from None
        expires = int(who.get("expires_us") or 0)
        if expires and expires <= timefmt.now_us():  # (an answer kept from before)
            raise Unauthenticated(tokens.expired(timefmt.rfc3339(expires)))
        projects = tuple(str(p) for p in who.get("projects") or ())
        return Caller(who["token_id"], who["name"], who["created_at"], expires, projects)

    async def _check(self, digest: str) -> dict[str, Any]:
        """The store's answer for a digest; ``limits``: this ingress enforces tokens' project
        limits (a store refuses a limited token to one that does not say so)."""
        args = {"digest": digest, "limits": True}
        try:
            return await self.known.call(self.nc, "token.check", args, digest)  # type: ignore[no-any-return]
        except InvalidArgument:  # a store of an earlier version: it keeps no limited tokens
            return await self.known.call(self.nc, "token.check", {"digest": digest}, digest)  # type: ignore[no-any-return]

    @staticmethod
    def _check_not_a_browser(headers: Mapping[str, str]) -> None:
        """A web page open in the operator's browser runs as the operator: it must not call
        a tokens-off API. Refused: a request addressed to another name than a loopback one
        (a page that rebinds its own name to 127.0.0.1), one a browser marks as coming from
        a page (``Origin``, ``Sec-Fetch-Site`` other than ``none``), and one that is not
        msgpack (what a page may send without asking first is text or a form)."""
        host = headers.get("host") or ""
        name = host_name(host)
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        why = ""
        if not is_loopback(name):
            why = (
                "answers only requests addressed to a loopback name (localhost, 127.0.0.1); "
                f"this one was addressed to {host or 'no host'!r}"
            )
        elif headers.get("origin") is not None or headers.get("sec-fetch-site", "none") != "none":
            why = "does not answer a web page (this request has an Origin or Sec-Fetch-Site)"
        elif kind != MSGPACK:
            why = f"answers only msgpack requests (Content-Type: {MSGPACK}), as the ak CLI sends"
        if why:
            raise Unauthenticated(
                f"API tokens are off on this server (dev mode on a loopback address), so its "
                f"API {why}. Start it with AK_AUTH__TOKENS=on and use an API token to call "
                f"it from elsewhere."
            )

    @staticmethod
    def _check_local_user(client: tuple[str, int] | None, server: tuple[str, int] | None) -> None:
        if not peers.supported():  # no socket owners to read (not Linux): loopback alone
            return
        uid = peers.owner(client, server) if client and server else None
        if uid is not None and uid in (0, os.geteuid()):
            return
        who = "an unknown user" if uid is None else f"user id {uid}"
        raise Unauthenticated(
            f"API tokens are off on this server (dev mode on a loopback address), so its API "
            f"answers only the user that runs it (user id {os.geteuid()}); this call came "
            f"from {who} (a handler or another account on the machine). To call the API "
            f"from there, start the server with AK_AUTH__TOKENS=on and use an API token."
        )
