"""indexes for a zoo of 10,000 versions, and the sketch band index of base="auto"

Revision ID: issue18_zoo_scale
Revises: issue12_revisions

Indexes for the queries every push, commit, download and lineage call makes (stale-upload sweep on
version status and age, a covering index for the lineage walk, jobs by target, blob holders), and
``sketch_band``: the locality-sensitive keys of every version's sketch
(``services.sketch_index``), filled here from the sketches already stored, so that
``base="auto"`` compares an upload with a bounded set of candidates.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "issue18_zoo_scale"
down_revision = "issue12_revisions"
branch_labels = None
depends_on = None

BLOB_HOLDERS = (("file", "blob"), ("file", "header_blob"), ("tensor", "blob"), ("artifact", "blob"))


def upgrade() -> None:
    op.create_table(
        "sketch_band",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("band", sa.Integer(), nullable=False),
        sa.Column("key", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_sketch_band_version_id_version"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("version_id", "band", name=op.f("pk_sketch_band")),
    )
    with op.batch_alter_table("sketch_band", schema=None) as batch_op:
        batch_op.create_index("ix_sketch_band_band_key", ["band", "key", "version_id"], unique=False)
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.create_index("ix_version_status_created_at", ["status", "created_at"], unique=False)
        batch_op.create_index(
            "ix_version_lineage", ["parent_version_id", "id", "model_id", "relation"], unique=False
        )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.create_index("ix_job_kind_target_id", ["kind", "target_id"], unique=False)
    for table, column in BLOB_HOLDERS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(batch_op.f(f"ix_{table}_{column}"), [column], unique=False)
    _fill_bands()


def _fill_bands() -> None:
    from deltazoo.services.sketch_index import band_keys

    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, sketch FROM version WHERE sketch IS NOT NULL")).all()
    bands = sa.table("sketch_band", sa.column("version_id"), sa.column("band"), sa.column("key"))
    out: list[dict[str, Any]] = []
    for version_id, sketch in rows:
        if isinstance(sketch, str):
            sketch = json.loads(sketch)
        for band, key in band_keys(sketch).items():
            out.append({"version_id": version_id, "band": band, "key": key})
    if out:
        op.bulk_insert(bands, out)


def downgrade() -> None:
    for table, column in reversed(BLOB_HOLDERS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_{column}"))
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index("ix_job_kind_target_id")
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.drop_index("ix_version_lineage")
        batch_op.drop_index("ix_version_status_created_at")
    with op.batch_alter_table("sketch_band", schema=None) as batch_op:
        batch_op.drop_index("ix_sketch_band_band_key")
    op.drop_table("sketch_band")
