"""SQL tables of the store (SQLModel; SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class Project(SQLModel, table=True):
    project_id: str = Field(primary_key=True)
    name: str = Field(index=True, unique=True)
    display_name: str = ""
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class Var(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("scope_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    scope_id: str = Field(index=True)  # a project id or a connection id
    name: str
    value: str = ""
    is_secret: bool = False
    description: str = ""
    # A connection's routing var (see routes.py) holds its claim here: unique, so that two
    # requests claiming one routing value at the same moment cannot both win.
    route_key: str | None = Field(default=None, unique=True, index=True)


class Connection(SQLModel, table=True):
    """A project's connection to an integration; its vars are Var rows scoped to its id."""

    __table_args__ = (UniqueConstraint("project_id", "name"),)
    connection_id: str = Field(primary_key=True)
    project_id: str = Field(index=True)
    name: str
    integration: str


class Trigger(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    trigger_id: str = Field(primary_key=True)
    project_id: str = Field(index=True)
    name: str
    source_type: str
    event_type: str = ""
    filter: str = ""
    call: str = ""
    schedule: str = ""
    connection: str = ""
    is_durable: bool = True
    is_sync: bool = False
    webhook_slug: str | None = Field(default=None, index=True, unique=True)


class Build(SQLModel, table=True):
    # A project's builds newest first (its newest: `ak project export`), found in the index.
    __table_args__ = (Index("ix_build_project_newest", "project_id", "created_us", "build_id"),)
    # Build files live in SQL: they are small (source code), written once, read once per
    # runner, and belong in the same transaction and backup as the deployment that uses them.
    build_id: str = Field(primary_key=True)
    project_id: str = Field(index=True)
    files: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # msgpack {path: bytes}
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class Deployment(SQLModel, table=True):
    deployment_id: str = Field(primary_key=True)
    project_id: str = Field(index=True)
    build_id: str
    state: str = "INACTIVE"  # ACTIVE, DRAINING, INACTIVE
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class Session(SQLModel, table=True):
    # A page of a project's sessions (newest first) is read off the index, not sorted.
    __table_args__ = (Index("ix_session_project_newest", "project_id", "created_us", "session_id"),)
    session_id: str = Field(primary_key=True)
    project_id: str = Field(index=True)
    deployment_id: str = ""
    build_id: str = ""
    trigger_id: str = Field(default="", index=True)
    event_id: str = Field(default="", index=True)
    entrypoint: str = ""
    parent_session_id: str = Field(default="", index=True)
    inputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    is_durable: bool = True
    state: str = "CREATED"
    error: str = ""
    traceback: str = ""
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    updated_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class SessionRecord(SQLModel, table=True):
    """Materialized journal records (state changes and prints), one row per journal entry."""

    __table_args__ = (UniqueConstraint("session_id", "seq"),)
    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(index=True)
    seq: int
    kind: str
    t_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class EventRow(SQLModel, table=True):
    __tablename__ = "events"
    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(index=True, unique=True)
    project_id: str = Field(index=True)
    destination_id: str = Field(default="", index=True)
    event_type: str = ""
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # msgpack
    memo: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # the memo sealed (akcore.eventdata), ``memo`` then empty; None in rows of earlier versions
    sealed_memo: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class DispatchNote(SQLModel, table=True):
    """Why an event did not reach a trigger or subscription whose filter could not decide
    (over its budget, an error), from the dispatcher. Keyed by event id only: the notes may
    be written before the events consumer has materialized the event itself."""

    __tablename__ = "dispatch_notes"
    __table_args__ = (UniqueConstraint("event_id", "source"),)
    id: int | None = Field(default=None, primary_key=True)
    event_id: str
    source: str  # the trigger or subscription id whose filter it is about
    note: str
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class Subscription(SQLModel, table=True):
    """A live session's ``subscribe()``: events on ``trigger_id`` matching ``filter``."""

    subscription_id: str = Field(primary_key=True)
    session_id: str = Field(index=True)
    project_id: str
    trigger_id: str = Field(index=True)
    filter: str = ""
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class SpanRow(SQLModel, table=True):
    """A finished trace span from any service (``ak.spans``), for ``ak session trace``."""

    __tablename__ = "spans"
    __table_args__ = (UniqueConstraint("trace_id", "span_id"),)
    id: int | None = Field(default=None, primary_key=True)
    trace_id: str = Field(index=True)
    span_id: str
    parent_id: str = ""
    session_id: str = Field(default="", index=True)
    name: str
    service: str
    start_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    end_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    status: str = "UNSET"
    status_description: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    events: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class ApiToken(SQLModel, table=True):
    """An API token, kept as its SHA-256 digest only (the raw token is shown once, when it
    is made). ``key``: the digest's first characters, to find it without comparing them all."""

    __tablename__ = "api_tokens"
    token_id: str = Field(primary_key=True)
    key: str = Field(index=True)
    digest: str = Field(unique=True)
    name: str = ""
    created_by: str = ""  # the token_id that made it, or "bootstrap" / "dev"
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    # when it stops being taken; 0: never
    expires_us: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    # when it was revoked (kept so that its digest is never taken again); 0: it was not
    revoked_us: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    # the ids of the projects it may act on, separated by spaces; "": every project
    projects: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class KeyCanary(SQLModel, table=True):
    """The secrets key's canary kept beside the data it guards (``ak_store.keycanary``): one
    row, a fixed value sealed with the key that seals this database's secrets."""

    __tablename__ = "key_canary"
    id: int = Field(default=1, primary_key=True)
    sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Delivery(SQLModel, table=True):
    """A provider's delivery (GitHub's ``X-GitHub-Delivery``, Slack's event id) to one
    connection, and the event it became: a redelivery finds it and makes no second event.
    Each delivery is also kept by a digest of what its signature covers (the id is not
    signed): a signed request replayed under a new id finds it too."""

    __tablename__ = "deliveries"
    # "<integration>:<delivery id>:<connection id>", or
    # "<integration>-signed:<sha256 hex of the signed bytes>:<connection id>"
    key: str = Field(primary_key=True)
    event_id: str
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
