"""token expiry

An API token may expire (``ak auth create-token --expires 30d``): ``expires_us``, the
moment it stops being taken; 0 for a token that never expires (all those made before).
A revoked token's row stays, with ``revoked_us``, so that its digest is never taken again
(``ak up`` gives the store the CLI's stored token at every start).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 17:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(
            sa.Column("expires_us", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("revoked_us", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("revoked_us")
        batch.drop_column("expires_us")
