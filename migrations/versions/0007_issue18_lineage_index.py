"""lineage_descendant: every version's ancestor models, so a model's descendants are paged and counted
from an index instead of walked (registry.lineage_index keeps it; filled here from the versions
stored); ix_evaluation_text_bpb: the leaderboard ranked and paged in the database

Revision ID: issue18_lineage_index
Revises: issue13_lossy_files
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "issue18_lineage_index"
down_revision = "issue13_lossy_files"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lineage_descendant",
        sa.Column("ancestor_model_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("relation", sa.String(length=40), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ancestor_model_id"],
            ["model.id"],
            name=op.f("fk_lineage_descendant_ancestor_model_id_model"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_lineage_descendant_model_id_model"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["version.id"],
            name=op.f("fk_lineage_descendant_version_id_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("ancestor_model_id", "version_id", name=op.f("pk_lineage_descendant")),
    )
    with op.batch_alter_table("lineage_descendant", schema=None) as batch_op:
        batch_op.create_index(
            "ix_lineage_descendant_counts",
            ["ancestor_model_id", "relation", "private", "model_id"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_lineage_descendant_version_id"), ["version_id"], unique=False)
    with op.batch_alter_table("evaluation", schema=None) as batch_op:
        batch_op.create_index("ix_evaluation_text_bpb", ["text_set_id", "bits_per_byte", "id"], unique=False)
    from deltazoo.registry.lineage_index import add_rows

    bind = op.get_bind()
    ids = [
        int(i)
        for i in bind.execute(sa.text("SELECT id FROM version WHERE parent_version_id IS NOT NULL")).scalars()
    ]
    add_rows(bind, ids)


def downgrade() -> None:
    with op.batch_alter_table("evaluation", schema=None) as batch_op:
        batch_op.drop_index("ix_evaluation_text_bpb")
    with op.batch_alter_table("lineage_descendant", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lineage_descendant_version_id"))
        batch_op.drop_index("ix_lineage_descendant_counts")
    op.drop_table("lineage_descendant")
