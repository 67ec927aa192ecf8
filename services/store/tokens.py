"""The store's API tokens: kept as SHA-256 digests, checked in constant time."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

from akcore import ids, timefmt, tokens
from akcore import requests as rq
from akcore.errors import Conflict, InvalidArgument, NotFound, Unauthenticated
from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from .models import ApiToken, Project

log = logging.getLogger(__name__)


class Tokens:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, req: rq.TokenAdd) -> None:
        """Keeps a digest (once: adding one already kept changes nothing)."""
        if not tokens.is_digest(req.digest):
            raise InvalidArgument("token.add: digest must be 64 lowercase hex characters")
        if req.expires_us and req.expires_us <= timefmt.now_us():
            raise InvalidArgument("token.add: the token would have expired already")
        if not all(ids.is_id(p, "prj") for p in req.projects):
            raise InvalidArgument("token.add: projects must be prj_ ids")
        projects = " ".join(dict.fromkeys(req.projects))
        with DB(self.engine) as db:
            kept = _find(db, req.digest)
            if kept is not None and kept.revoked_us:
                raise Conflict("that API token was revoked, and stays refused")
            if kept is not None:
                return
            db.add(
                ApiToken(
                    token_id=ids.new_id("tok"),
                    key=req.digest[: tokens.KEY_LENGTH],
                    digest=(tokens.LIMITED_PREFIX if projects else "") + req.digest,
                    name=req.name,
                    created_by=req.created_by,
                    created_us=timefmt.now_us(),
                    expires_us=max(0, req.expires_us),
                    projects=projects,
                )
            )
            db.commit()

    def check(self, req: rq.TokenCheck) -> dict[str, Any]:
        """Who a digest belongs to (until when: ``expires_us``, 0 for ever; on which
        projects: ``projects``, none for every one); Unauthenticated when it is no token's,
        its token expired, or it is limited to projects and the caller does not enforce
        limits (an ingress of an earlier version)."""
        with DB(self.engine) as db:
            row = _find(db, req.digest)
        if row is not None and not row.revoked_us:
            if row.expires_us and row.expires_us <= timefmt.now_us():
                raise Unauthenticated(tokens.expired(timefmt.rfc3339(row.expires_us)))
            if _limited(row) and not (req.limits and row.projects):
                log.warning(
                    "API token %s is limited to projects and was refused: the ingress asking "
                    "is of an earlier version (it does not enforce limits), or the token's "
                    "projects are not recorded (the database went back a migration)",
                    row.token_id,
                )
            else:
                return {
                    "token_id": row.token_id,
                    "name": row.name,
                    "created_at": timefmt.rfc3339(row.created_us),
                    "expires_us": row.expires_us,
                    "projects": row.projects.split(),
                }
        raise Unauthenticated("invalid API token")

    def list(self, req: rq.Empty) -> list[dict[str, Any]]:
        """Every token, oldest first: its id, name, maker, time, expiry ("" for none) and
        the projects it is limited to (by name; none: every project); never the token."""
        with DB(self.engine) as db:
            rows = db.exec(
                select(ApiToken).where(ApiToken.revoked_us == 0).order_by(ApiToken.created_us)  # type: ignore[arg-type]
            ).all()
            names = {p.project_id: p.name for p in db.exec(select(Project))}
        return [
            {
                "token_id": row.token_id,
                "name": row.name,
                "created_by": row.created_by,
                "created_at": timefmt.rfc3339(row.created_us),
                "expires_at": timefmt.rfc3339(row.expires_us) if row.expires_us else "",
                "projects": [names.get(p, p) for p in row.projects.split()]
                or (["(not recorded: the token is refused)"] if _limited(row) else []),
            }
            for row in rows
        ]

    def revoke(self, req: rq.TokenRevoke) -> None:
        """Refuses a token from now on (ingresses forget what they took when the store
        announces it: ``Authenticator``); its row stays, so that its digest is never taken
        again. Never the last token that neither expires nor is limited to projects, which
        would leave no lasting way to the whole server (once the others expire)."""
        with DB(self.engine) as db:
            row = db.get(ApiToken, req.token_id)
            if row is None or row.revoked_us:
                raise NotFound(f'API token "{req.token_id}" not found (ak auth list-tokens)')
            lasting = db.exec(
                select(ApiToken.token_id).where(
                    ApiToken.revoked_us == 0,
                    ApiToken.expires_us == 0,
                    ApiToken.projects == "",
                    col(ApiToken.digest).not_like(f"{tokens.LIMITED_PREFIX}%"),
                    ApiToken.token_id != row.token_id,
                )
            ).first()
            if not row.expires_us and not _limited(row) and lasting is None:
                raise Conflict(
                    f'"{req.token_id}" is the last API token that never expires and may act on '
                    "every project: revoked, nothing could manage the server once the others "
                    "expire; make another first (ak auth create-token, called with a token "
                    "that never expires and is not limited to projects)"
                )
            name = row.name
            row.revoked_us = timefmt.now_us()
            db.add(row)
            db.commit()
        log.info("API token %s (%s) revoked", req.token_id, name or "no name")

    def bootstrap(self, path: str) -> None:
        """Keeps the token (or digest) of an operator's bootstrap file, if one is set."""
        if not path:
            return
        try:
            found = tokens.bootstrap_digest(Path(path).read_text())
        except OSError as e:
            raise InvalidArgument(f"cannot read the bootstrap token file {path}: {e}") from None
        except ValueError as e:
            raise InvalidArgument(f"{path}: {e}") from None
        try:
            self.add(rq.TokenAdd(digest=found, name="bootstrap", created_by="bootstrap"))
        except Conflict:
            log.error(
                "the bootstrap API token of %s was revoked (ak auth revoke-token) and stays "
                "refused: give the CLI another token (ak auth create-token, then ak auth "
                "set-token) and start again",
                path,
            )
            return
        with DB(self.engine) as db:
            row = _find(db, found)
        assert row is not None
        if row.expires_us and row.expires_us <= timefmt.now_us():
            log.error(
                "the bootstrap API token of %s expired at %s (it was made with --expires): "
                "give the CLI a token that never expires (ak auth set-token) and start again",
                path,
                timefmt.rfc3339(row.expires_us),
            )
            return
        log.info("bootstrap API token from %s is kept", path)


def _find(db: DB, digest: str) -> ApiToken | None:
    """The token kept under ``digest`` (limited or not), compared in constant time. Should
    it be kept twice (a store of an earlier version, which does not match a limited
    token's digest, added it again when given it as a bootstrap token), the row that
    allows least: a revoked one, else a limited one."""
    rows = db.exec(select(ApiToken).where(ApiToken.key == digest[: tokens.KEY_LENGTH])).all()
    found = [
        row
        for row in rows
        if hmac.compare_digest(
            row.digest.removeprefix(tokens.LIMITED_PREFIX).encode(), digest.encode()
        )
    ]
    found.sort(key=lambda row: (not row.revoked_us, not _limited(row)))
    return found[0] if found else None


def _limited(row: ApiToken) -> bool:
    return bool(row.projects) or row.digest.startswith(tokens.LIMITED_PREFIX)
