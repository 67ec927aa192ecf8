"""Who calls ``/api``: the API token of the ``Authorization: Bearer`` header, checked
against the digests the store keeps (the raw token goes no further than this process)."""

from __future__ import annotations

from dataclasses import dataclass

from akcore import tokens
from akcore.cache import StoreCache
from akcore.errors import Unauthenticated
from nats.aio.client import Client

HOW_TO_GET_ONE = (
    "The CLI sends the token of `ak auth set-token <token>` (or of AK_TOKEN). "
    "`ak up` stores a first token for the CLI on the machine it runs on; "
    "`ak auth create-token` run there makes more (compose: the token of "
    "AK_AUTH__BOOTSTRAP_TOKEN_FILE)."
)


@dataclass(frozen=True)
class Caller:
    """``token_id`` is "" when tokens are off (dev mode on loopback)."""

    token_id: str
    name: str
    created_at: str = ""


DEV_CALLER = Caller(token_id="", name="dev (API tokens are off: dev mode on a loopback address)")


class Authenticator:
    """Checks tokens; a token the store knows is remembered for a few seconds (the CLI's
    polls would otherwise cost a store request each). Unknown ones are asked every time."""

    KEEP = 5.0

    def __init__(self, nc: Client, required: bool) -> None:
        self.nc, self.required = nc, required
        self.known = StoreCache(ttl=self.KEEP)

    async def caller(self, authorization: str | None) -> Caller:
        """The caller the header names; Unauthenticated without a token the store knows."""
        if not self.required:
            return DEV_CALLER
        if not authorization:
            raise Unauthenticated(f"missing API token. {HOW_TO_GET_ONE}")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                f"invalid authorization header: use `Authorization: Bearer <token>`. "
                f"{HOW_TO_GET_ONE}"
            )
        try:
            digest = tokens.digest(token)
            who = await self.known.call(self.nc, "token.check", {"digest": digest}, digest)
        except Unauthenticated:
            raise Unauthenticated(
                f"invalid API token: the server does not know it. {HOW_TO_GET_ONE}"
            ) from None
        return Caller(who["token_id"], who["name"], who["created_at"])
