"""The store's API tokens: a revoked token stays refused (its digest is kept, so that `ak
up`, which gives the store the CLI's stored token at each start, does not bring it back),
and the last token that never expires cannot be revoked (an expiring one could otherwise
remove every lasting way in)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ak_store.db import open_engine
from ak_store.models import ApiToken
from ak_store.tokens import Tokens
from akcore import requests as rq
from akcore import timefmt, tokens
from akcore.errors import Conflict, Unauthenticated
from sqlmodel import Session as DB


@pytest.fixture
def t(db_dsn: str) -> Iterator[Tokens]:
    engine = open_engine(db_dsn)
    yield Tokens(engine)
    engine.dispose()


def _id(t: Tokens, name: str) -> str:
    return next(row["token_id"] for row in t.list(rq.Empty()) if row["name"] == name)


def test_an_expiring_token_cannot_revoke_the_last_lasting_one(t: Tokens) -> None:
    lasting, short = tokens.digest("akt_lasting"), tokens.digest("akt_short")
    t.add(rq.TokenAdd(digest=lasting, name="first"))
    t.add(rq.TokenAdd(digest=short, name="short", expires_us=timefmt.now_us() + 60_000_000))
    with pytest.raises(Conflict, match="is the last API token that never expires"):
        t.revoke(rq.TokenRevoke(token_id=_id(t, "first")))
    t.revoke(rq.TokenRevoke(token_id=_id(t, "short")))  # an expiring one always may go
    assert [row["name"] for row in t.list(rq.Empty())] == ["first"]


def test_a_revoked_token_stays_refused_even_given_again(t: Tokens, tmp_path: Path) -> None:
    t.add(rq.TokenAdd(digest=tokens.digest("akt_other"), name="other"))
    leaked = "akt_" + "l" * 40
    boot = tmp_path / "bootstrap.sha256"
    boot.write_text(tokens.DIGEST_PREFIX + tokens.digest(leaked) + "\n")
    t.bootstrap(str(boot))
    assert t.check(rq.TokenCheck(digest=tokens.digest(leaked)))["name"] == "bootstrap"
    t.revoke(rq.TokenRevoke(token_id=_id(t, "bootstrap")))
    t.bootstrap(str(boot))  # `ak up` starting again with the CLI's stored (revoked) token
    with pytest.raises(Unauthenticated):
        t.check(rq.TokenCheck(digest=tokens.digest(leaked)))
    with pytest.raises(Conflict, match="was revoked"):
        t.add(rq.TokenAdd(digest=tokens.digest(leaked), name="again"))
    assert [row["name"] for row in t.list(rq.Empty())] == ["other"]


def test_a_limited_token_given_as_the_cli_s_stays_limited(t: Tokens, tmp_path: Path) -> None:
    """`ak up` gives the store the CLI's stored token as a bootstrap token: one limited to
    projects keeps its limit (no second, unlimited row for the same token)."""
    t.add(rq.TokenAdd(digest=tokens.digest("akt_admin"), name="admin"))
    limited = "akt_" + "p" * 40
    project = "prj_" + "0" * 26
    t.add(rq.TokenAdd(digest=tokens.digest(limited), name="ci", projects=[project]))
    boot = tmp_path / "bootstrap.sha256"
    boot.write_text(tokens.DIGEST_PREFIX + tokens.digest(limited) + "\n")
    t.bootstrap(str(boot))
    who = t.check(rq.TokenCheck(digest=tokens.digest(limited), limits=True))
    assert (who["name"], who["projects"]) == ("ci", [project])
    assert sorted(row["name"] for row in t.list(rq.Empty())) == ["admin", "ci"]


def test_a_limited_token_kept_twice_stays_limited(db_dsn: str) -> None:
    """A store of an earlier version (gone back to) adds a limited token's digest again,
    bare, when `ak up` gives it as the CLI's: upgraded again, the row that allows least is
    the one taken, whichever the database lists first."""
    engine = open_engine(db_dsn)
    t = Tokens(engine)
    raw, project = "akt_" + "d" * 40, "prj_" + "1" * 26
    digest = tokens.digest(raw)
    with DB(engine) as db:  # the bare row first, the limited one after
        for n, (kept, projects) in enumerate(
            [(digest, ""), (tokens.LIMITED_PREFIX + digest, project)]
        ):
            db.add(
                ApiToken(
                    token_id=f"tok_{n}" + "2" * 25,
                    key=digest[: tokens.KEY_LENGTH],
                    digest=kept,
                    name="ci" if projects else "bootstrap",
                    created_us=timefmt.now_us(),
                    projects=projects,
                )
            )
            db.commit()
    who = t.check(rq.TokenCheck(digest=digest, limits=True))
    assert (who["name"], who["projects"]) == ("ci", [project])
    with pytest.raises(Unauthenticated):
        t.check(rq.TokenCheck(digest=digest))  # (an ingress knowing no limits)
    engine.dispose()
