"""the token that created each version (per-token limit on pending versions)

Revision ID: issue15_version_creator
Revises: issue18_lineage_index
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "issue15_version_creator"
down_revision = "issue18_lineage_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created_by_token_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_version_created_by_token_id_api_token"),
            "api_token",
            ["created_by_token_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index("ix_version_creator_status", ["created_by_token_id", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.drop_index("ix_version_creator_status")
        batch_op.drop_constraint(batch_op.f("fk_version_created_by_token_id_api_token"), type_="foreignkey")
        batch_op.drop_column("created_by_token_id")
