"""api tokens

API tokens, kept as SHA-256 digests (``ak auth create-token``; the bootstrap token of
``ak up`` or of ``AK_AUTH__BOOTSTRAP_TOKEN_FILE``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 02:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("token_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("token_id"),
        sa.UniqueConstraint("digest"),
    )
    op.create_index(op.f("ix_api_tokens_key"), "api_tokens", ["key"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_api_tokens_key"), table_name="api_tokens")
    op.drop_table("api_tokens")
