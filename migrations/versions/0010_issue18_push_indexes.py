"""indexes whose cost does not grow with the zoo on a push: upload dedup reads files by (sha256, id) in
id order and stops at the first ready one (ix_file_sha256 made it fetch and sort every file with those
bytes: thousands when fine-tunes share a config.json); encode dedup reads only stored tensors, not
their ``same`` copies (partial ix_tensor_stored_sha256 replaces ix_tensor_sha256); staged uploads are
found by key (ix_file_staging_key, partial: only files still waiting to be encoded), not by a scan of
every file

Revision ID: issue18_push_indexes
Revises: issue18_tallies_search
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "issue18_push_indexes"
down_revision = "issue18_tallies_search"
branch_labels = None
depends_on = None

STAGED = sa.text("staging_key IS NOT NULL")
STORED = sa.text("encoding <> 'same'")


def upgrade() -> None:
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.drop_index("ix_file_sha256")
        batch_op.create_index("ix_file_sha256_id", ["sha256", "id"], unique=False)
        batch_op.create_index(
            "ix_file_staging_key", ["staging_key"], unique=False, postgresql_where=STAGED, sqlite_where=STAGED
        )
    with op.batch_alter_table("tensor", schema=None) as batch_op:
        batch_op.drop_index("ix_tensor_sha256")
        batch_op.create_index(
            "ix_tensor_stored_sha256",
            ["sha256", "depth", "id"],
            unique=False,
            postgresql_where=STORED,
            sqlite_where=STORED,
        )


def downgrade() -> None:
    with op.batch_alter_table("tensor", schema=None) as batch_op:
        batch_op.drop_index("ix_tensor_stored_sha256")
        batch_op.create_index("ix_tensor_sha256", ["sha256"], unique=False)
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.drop_index("ix_file_staging_key")
        batch_op.drop_index("ix_file_sha256_id")
        batch_op.create_index("ix_file_sha256", ["sha256"], unique=False)
