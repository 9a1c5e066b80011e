"""Record the period template a sequence came from; index the audit trail by sequence.

Revision ID: 002
Revises: 001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "002"
down_revision = "001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Each step checks first: MySQL's DDL is not transactional, so a run stopped halfway (or
    # a replica that lost the race to migrate) finds part of it done already.
    inspector = sa.inspect(op.get_bind())
    if "template" not in {c["name"] for c in inspector.get_columns("id_managers")}:
        # batch: SQLite cannot add a column with ALTER TABLE in every form Alembic emits.
        with op.batch_alter_table("id_managers") as batch:
            batch.add_column(sa.Column("template", sa.String(255), nullable=True))
    indexes = {i["name"] for i in inspector.get_indexes("id_manager_audit")}
    # The audit trail of one sequence, newest first, without reading every entry.
    if "ix_id_manager_audit_sequence" not in indexes:
        op.create_index(
            "ix_id_manager_audit_sequence", "id_manager_audit", ["scope", "prefix", "id"]
        )
    if "ix_id_manager_audit_created_at" not in indexes:
        op.create_index("ix_id_manager_audit_created_at", "id_manager_audit", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_id_manager_audit_created_at", table_name="id_manager_audit")
    op.drop_index("ix_id_manager_audit_sequence", table_name="id_manager_audit")
    with op.batch_alter_table("id_managers") as batch:
        batch.drop_column("template")
