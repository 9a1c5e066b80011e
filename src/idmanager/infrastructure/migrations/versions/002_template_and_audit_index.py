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
    # batch: SQLite cannot add a column with ALTER TABLE in every form Alembic emits.
    with op.batch_alter_table("id_managers") as batch:
        batch.add_column(sa.Column("template", sa.String(255), nullable=True))
    # The audit trail of one sequence, newest first, without reading every entry.
    op.create_index("ix_id_manager_audit_sequence", "id_manager_audit", ["scope", "prefix", "id"])
    op.create_index("ix_id_manager_audit_created_at", "id_manager_audit", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_id_manager_audit_created_at", table_name="id_manager_audit")
    op.drop_index("ix_id_manager_audit_sequence", table_name="id_manager_audit")
    with op.batch_alter_table("id_managers") as batch:
        batch.drop_column("template")
