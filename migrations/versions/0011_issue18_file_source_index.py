"""an index on file.source_file_id: a delete finds the files deduplicated against its files (the
``ON DELETE SET NULL`` of the foreign key, and services.dedup_handover's pending copies) by index, not
by a scan of every file for each file deleted

Revision ID: issue18_file_source_index
Revises: issue18_push_indexes
"""

from __future__ import annotations

from alembic import op

revision = "issue18_file_source_index"
down_revision = "issue18_push_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_file_source_file_id", "file", ["source_file_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_file_source_file_id", table_name="file")
