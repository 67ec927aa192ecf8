"""Throw-away PostgreSQL databases for tests, on the server at AK_TEST_PG_URL.

Without a reachable server the PostgreSQL variants are skipped, unless AK_TEST_REQUIRE_PG
is set (scripts/test sets it after starting PostgreSQL), in which case they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get(
    "AK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def fresh_database() -> Iterator[str]:
    """Creates an empty database and yields its URL; drops it afterwards."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"ak_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        if os.environ.get("AK_TEST_REQUIRE_PG"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {ADMIN_URL} ({type(e).__name__})")
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
