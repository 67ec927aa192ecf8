"""event memos sealed

An event's memo (what ``ak event dispatch --memo`` was given, a webhook sender's address)
rests sealed with the data key in ``events.sealed_memo``; ``memo`` is then empty. Rows kept
before keep their memo in the clear, and are read as they are.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 17:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("sealed_memo", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("sealed_memo")
