"""Create the id_managers table and its audit table.

Revision ID: 001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "id_managers",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(255), nullable=False, server_default=""),
        sa.Column("prefix", sa.String(255), nullable=False),
        sa.Column("last_value", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("separator", sa.String(4), nullable=False, server_default="-"),
        sa.Column("letter_width", sa.SmallInteger(), nullable=False, server_default="3"),
        sa.Column("digit_width", sa.SmallInteger(), nullable=False, server_default="4"),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
        sa.Column("created_by", sa.String(255), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.CheckConstraint("last_value >= 0", name="ck_id_managers_last_value_not_negative"),
        sa.PrimaryKeyConstraint("id", name="pk_id_managers"),
        sa.UniqueConstraint("scope", "prefix", name="uq_id_managers_scope_prefix"),
    )
    op.create_table(
        "id_manager_audit",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("prefix", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("old_value", sa.BigInteger(), nullable=True),
        sa.Column("new_value", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.String(255), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
        sa.PrimaryKeyConstraint("id", name="pk_id_manager_audit"),
    )


def downgrade() -> None:
    op.drop_table("id_manager_audit")
    op.drop_table("id_managers")
