"""The store's schema comes from migrations, and the migrations match the models."""

from __future__ import annotations

from ak_store.db import migrate, open_engine
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel, create_engine


def test_migrations_build_exactly_the_models(db_dsn: str) -> None:
    engine = open_engine(db_dsn)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert diff == []  # a model change without a migration fails here
    assert version is not None
    migrate(engine)  # a second start finds nothing to do
    engine.dispose()


def test_database_from_before_migrations_is_adopted(db_dsn: str) -> None:
    old = create_engine(db_dsn)
    SQLModel.metadata.tables["project"].create(old)  # as `create_all` of an old version left it
    old.dispose()
    engine = open_engine(db_dsn)
    tables = set(inspect(engine).get_table_names())
    assert {"project", "spans", "connection", "alembic_version"} <= tables
    engine.dispose()
