"""Remember the answers of requests sent with an Idempotency-Key.

Revision ID: 003
Revises: 002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "003"
down_revision = "002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Keys compared exactly on MySQL/MariaDB too (their default collation ignores case).
Exact = sa.String(255).with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql")


def upgrade() -> None:
    # Checked first: MySQL's DDL is not transactional (see 002).
    if "id_manager_idempotency" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "id_manager_idempotency",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        # Whose key: an API key's name. One caller never reads another's answers.
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("idem_key", Exact, nullable=False),
        # The request the key was first used with: the same key with another request is
        # refused.
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
        sa.PrimaryKeyConstraint("id", name="pk_id_manager_idempotency"),
        sa.UniqueConstraint("owner", "idem_key", name="uq_id_manager_idempotency_owner"),
    )
    op.create_index(
        "ix_id_manager_idempotency_created_at", "id_manager_idempotency", ["created_at"]
    )


def downgrade() -> None:
    op.drop_table("id_manager_idempotency")
