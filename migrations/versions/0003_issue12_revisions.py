"""named revisions: a 40-hex commit id per version, tags

Revision ID: issue12_revisions
Revises: 0002

Every version gets a stable commit id (40 hex digits, the ``sha`` Hugging Face Hub clients key their
caches on; existing versions get a random one); ``version_tag`` holds a model's named revisions
(``prod``, ``v1.2``), each pointing at one of its versions.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "issue12_revisions"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("commit_id", sa.String(length=40), nullable=True))
    version = sa.table("version", sa.column("id", sa.Integer), sa.column("commit_id", sa.String))
    conn = op.get_bind()
    for (vid,) in conn.execute(sa.select(version.c.id)).all():
        conn.execute(version.update().where(version.c.id == vid).values(commit_id=secrets.token_hex(20)))
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.alter_column("commit_id", existing_type=sa.String(length=40), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_version_commit_id"), ["commit_id"])
    op.create_table(
        "version_tag",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_version_tag_model_id_model"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_version_tag_version_id_version"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version_tag")),
        sa.UniqueConstraint("model_id", "name", name=op.f("uq_version_tag_model_id")),
    )
    op.create_index(op.f("ix_version_tag_version_id"), "version_tag", ["version_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_version_tag_version_id"), table_name="version_tag")
    op.drop_table("version_tag")
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_version_commit_id"), type_="unique")
        batch_op.drop_column("commit_id")
