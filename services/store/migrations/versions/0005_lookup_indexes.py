"""lookup indexes

Indexes for the lookups the web UI and the API filter by: a session's children, the
sessions of a trigger or of an event, and the events of a trigger.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 09:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES = (
    ("session", "parent_session_id"),
    ("session", "trigger_id"),
    ("session", "event_id"),
    ("events", "destination_id"),
)


def upgrade() -> None:
    for table, column in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(batch_op.f(f"ix_{table}_{column}"), [column], unique=False)


def downgrade() -> None:
    for table, column in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_{column}"))
