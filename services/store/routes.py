"""How a provider's delivery finds its connection: by a routing variable of the connection
(GitHub's ``pat_key`` and ``install_key__<app>__<installation>``, Slack's ``install_ids``),
never by a secret. A routing value names one connection only: a project cannot claim
another's (it would receive, or block, the other's deliveries)."""

from __future__ import annotations

import hashlib

from akcore.errors import Conflict
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session as DB
from sqlmodel import select

from .models import Connection, Var

# Variables whose value routes deliveries (by value), and the prefixes of those whose name
# does (any value).
BY_VALUE = frozenset({"pat_key", "install_ids"})
BY_NAME = ("install_key__",)


def is_routing(name: str) -> bool:
    return name in BY_VALUE or name.startswith(BY_NAME)


def claim(scope: str, name: str, value: str) -> str | None:
    """The claim a var makes (kept unique in ``Var.route_key``): a digest of the name of a
    var that routes by name, of the name and value of one that routes by value (a digest:
    values up to the var limit fit a unique index on every database); None for any other
    var."""
    if not is_routing(name) or not scope.startswith("con_"):
        return None
    return claim_digest(f"{name}={value}" if name in BY_VALUE else name)


def claim_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write(db: DB, commit: bool = False) -> None:
    """Flushes (or commits) vars just added; Conflict when a unique row was written by
    another request since this one looked: two claims of one routing value at the same
    moment (on PostgreSQL both pass ``check_unclaimed``), or two creations of one var. The
    transaction is rolled back then: nothing of the request is kept."""
    try:
        db.commit() if commit else db.flush()
    except IntegrityError:
        db.rollback()
        raise Conflict(
            "another request changed the same project, connection or var, or claimed the same "
            "routing value, at the same moment: nothing was changed; run the command again"
        ) from None


def check_unclaimed(db: DB, scope: str, name: str, value: str, secret: bool) -> None:
    """Conflict when another connection holds the routing variable ``name`` (with this
    ``value`` for a variable that routes by value); also when it would be secret (a
    delivery is routed before any secret is opened)."""
    if not is_routing(name) or not scope.startswith("con_"):
        return
    if secret:
        raise Conflict(f"connection var {name!r} routes deliveries: it cannot be a secret")
    # Only connections' vars route (a project's var, or a leftover of a deleted connection,
    # with the same name routes nothing), and every one of them is looked at.
    q = (
        select(Connection.connection_id, Connection.project_id)
        .join(Var, Var.scope_id == Connection.connection_id)  # type: ignore[arg-type]
        .where(Var.name == name, Var.scope_id != scope)
    )
    if name in BY_VALUE:
        q = q.where(Var.value == value)
    owner = db.exec(q.order_by(Connection.connection_id)).first()
    if owner is None:
        return
    mine = db.get(Connection, scope)
    # Another project's connection is not named: whoever sets this var may not see it.
    which = owner[0] if mine is not None and mine.project_id == owner[1] else "of another project"
    raise Conflict(
        f"connection var {name}={value!r} is already used by another connection "
        f"({which}); each routes its own deliveries: choose another value"
    )


def candidates(db: DB, integration: str, name: str, value: str | None) -> list[Connection]:
    """Connections of ``integration`` with the non-secret routing variable ``name`` (equal
    to ``value`` when given): found by an indexed query, not by opening every variable."""
    q = select(Var.scope_id).where(Var.name == name, Var.is_secret == False)  # noqa: E712
    if value is not None:
        q = q.where(Var.value == value)
    scopes = set(db.exec(q))
    if not scopes:
        return []
    rows = db.exec(select(Connection).where(Connection.connection_id.in_(scopes)))  # type: ignore[attr-defined]
    return [c for c in rows if c.integration == integration]
