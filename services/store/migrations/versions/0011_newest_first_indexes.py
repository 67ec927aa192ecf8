"""newest first indexes

A project's sessions and builds in the order they are listed (newest first), so that a
page of them, or a project's newest build, is found in the index: SQLite sorted every
session (and build) of the project, each with its inputs (files) of up to 8 (6) MiB, for
each page or export (seconds of the store for a project of big rows).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 20:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_session_project_newest", "session", ["project_id", "created_us", "session_id"]),
    ("ix_build_project_newest", "build", ["project_id", "created_us", "build_id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
