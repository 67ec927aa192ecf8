"""key canary

The secrets key's canary kept in the database too (``key_canary``, one row), beside the
data it guards: a store given another key stops even when JetStream, which keeps the other
canary, was lost or reset. Filled by the first store to start.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 21:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_canary",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("key_canary")
