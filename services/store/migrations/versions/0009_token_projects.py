"""token projects

An API token may be limited to projects (``ak auth create-token --project``): ``projects``,
their ids separated by spaces; "" for a token that may act on every project (all those
made before).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 20:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("projects", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("projects")
