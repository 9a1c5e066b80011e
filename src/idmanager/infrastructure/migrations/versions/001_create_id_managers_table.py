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


def key_string() -> sa.String:
    """Return the type of ``scope`` and ``prefix``: compared exactly, on every backend.

    MySQL and MariaDB compare strings case-insensitively and ignoring trailing spaces by
    default, which would make the scopes ``acme`` and ``Acme`` one sequence there and two on
    PostgreSQL and SQLite. A binary, no-pad collation keeps the key exact.
    """
    dialect = op.get_bind().dialect
    if dialect.name != "mysql":
        return sa.String(255)
    if getattr(dialect, "is_mariadb", False):
        return sa.String(255, collation="utf8mb4_nopad_bin")
    version = dialect.server_version_info or (0,)
    return sa.String(255, collation="utf8mb4_0900_bin" if version >= (8, 0, 17) else "utf8mb4_bin")


def upgrade() -> None:
    op.create_table(
        "id_managers",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("scope", key_string(), nullable=False, server_default=""),
        sa.Column("prefix", key_string(), nullable=False),
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
        sa.CheckConstraint("last_value >= 0", name=op.f("ck_id_managers_last_value_not_negative")),
        sa.PrimaryKeyConstraint("id", name="pk_id_managers"),
        sa.UniqueConstraint("scope", "prefix", name="uq_id_managers_scope_prefix"),
    )
    op.create_table(
        "id_manager_audit",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("scope", key_string(), nullable=False),
        sa.Column("prefix", key_string(), nullable=False),
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
