"""large tensors stored in chunks (tensor_chunk), so Range reads decode only what they return

Revision ID: issue15_tensor_chunks
Revises: issue18_zoo_scale
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "issue15_tensor_chunks"
down_revision = "issue18_zoo_scale"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tensor", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chunks", sa.Integer(), server_default="0", nullable=False))
    op.create_table(
        "tensor_chunk",
        sa.Column("tensor_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("begin", sa.BigInteger(), nullable=False),
        sa.Column("end", sa.BigInteger(), nullable=False),
        sa.Column("encoding", sa.String(length=16), nullable=False),
        sa.Column("blob", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["blob"], ["blob.sha256"], name=op.f("fk_tensor_chunk_blob_blob")
        ),
        sa.ForeignKeyConstraint(
            ["tensor_id"], ["tensor.id"], name=op.f("fk_tensor_chunk_tensor_id_tensor"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tensor_id", "index", name=op.f("pk_tensor_chunk")),
    )
    with op.batch_alter_table("tensor_chunk", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tensor_chunk_blob"), ["blob"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tensor_chunk", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tensor_chunk_blob"))
    op.drop_table("tensor_chunk")
    with op.batch_alter_table("tensor", schema=None) as batch_op:
        batch_op.drop_column("chunks")
