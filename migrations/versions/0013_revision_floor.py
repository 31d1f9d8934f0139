"""revision_floor: the highest revision number each model name has had among deleted versions, so a
revision number names one version forever (a version pushed after the newest was deleted, or after the
model was deleted and made again, took the deleted one's number, and clients that cache numbered
revisions served the deleted version's files for it).

Revision ID: revision_floor
Revises: sketch_non_finite
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "revision_floor"
down_revision = "sketch_non_finite"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revision_floor",
        sa.Column("namespace_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["namespace_id"], ["namespace.id"], name=op.f("fk_revision_floor_namespace_id_namespace"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("namespace_id", "name", name=op.f("pk_revision_floor")),
    )


def downgrade() -> None:
    op.drop_table("revision_floor")
