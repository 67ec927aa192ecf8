"""Alembic environment: runs on the connection the store hands over (see ``db.migrate``)."""

from __future__ import annotations

from ak_store import models  # noqa: F401  (registers the tables)
from alembic import context
from sqlmodel import SQLModel

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE by copy on SQLite
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
