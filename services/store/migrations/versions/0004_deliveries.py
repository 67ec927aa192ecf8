"""deliveries

A provider's deliveries (GitHub's X-GitHub-Delivery) to connections, and the events they
became, so that a redelivery makes no second event.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 07:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index(op.f("ix_deliveries_created_us"), "deliveries", ["created_us"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_deliveries_created_us"), table_name="deliveries")
    op.drop_table("deliveries")
