"""route claims

A connection's routing var keeps its claim in ``var.route_key`` (unique; a SHA-256 of the
name, or of name=value for a var that routes by value), so that two
requests claiming one routing value at the same moment cannot both win. Vars there already
are given their claims in id order; a claim a later var repeats (two connections that won
such a race before this version) stays with the first var, and the later one routes nothing
until it is set again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 12:10:00.000000
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# As services/store/routes.py names them when this was written (a migration is frozen).
BY_VALUE = ("pat_key", "install_ids")
BY_NAME = "install_key__"


def upgrade() -> None:
    with op.batch_alter_table("var", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("route_key", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
    db = op.get_bind()
    rows = db.execute(
        sa.text(
            "SELECT var.id, var.name, var.value FROM var JOIN connection "
            "ON connection.connection_id = var.scope_id "
            "WHERE var.is_secret = :no ORDER BY var.id"
        ),
        {"no": False},
    )
    taken: set[str] = set()
    for var_id, name, value in rows.all():
        if name in BY_VALUE:
            key = f"{name}={value}"
        elif name.startswith(BY_NAME):
            key = name
        else:
            continue
        key = hashlib.sha256(key.encode()).hexdigest()  # as routes.claim keeps it
        if key in taken:
            continue
        taken.add(key)
        db.execute(
            sa.text("UPDATE var SET route_key = :key WHERE id = :id"), {"key": key, "id": var_id}
        )
    with op.batch_alter_table("var", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_var_route_key"), ["route_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("var", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_var_route_key"))
        batch_op.drop_column("route_key")
