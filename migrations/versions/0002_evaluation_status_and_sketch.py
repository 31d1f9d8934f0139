"""evaluation status, version sketch and parent similarity

Revision ID: 0002
Revises: 0001

Evaluations get a status (``pending``, ``ready``, ``not_evaluable``, ``failed``) and a message, so a
bits-per-byte figure may be missing. Versions get the small per-tensor sketch used to detect a parent
(``base="auto"``) and the similarity of the parent that was picked that way.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=20), nullable=False, server_default="ready"))
        batch_op.add_column(sa.Column("status_message", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.alter_column("bits_per_byte", existing_type=sa.Float(), nullable=True)
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sketch", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("parent_similarity", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.drop_column("parent_similarity")
        batch_op.drop_column("sketch")
    with op.batch_alter_table("evaluation", schema=None) as batch_op:
        batch_op.alter_column("bits_per_byte", existing_type=sa.Float(), nullable=False)
        batch_op.drop_column("updated_at")
        batch_op.drop_column("status_message")
        batch_op.drop_column("status")
