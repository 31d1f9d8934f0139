"""file.original_sha256: the pushed bytes' sha256 of a lossy (ELF) file, whose sha256 is what a pull serves

Revision ID: issue13_lossy_files
Revises: issue15_tensor_chunks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "issue13_lossy_files"
down_revision = "issue15_tensor_chunks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.add_column(sa.Column("original_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.drop_column("original_sha256")
