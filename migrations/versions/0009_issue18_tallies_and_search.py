"""tally / tally_delta: counters of the zoo kept by triggers (stats and the leaderboard's totals read
them instead of counting tables; registry.tallies), filled here from the rows stored; the search index
of models (pg_trgm GIN indexes on Postgres, an FTS5 trigram table on SQLite; registry.model_search)

Revision ID: issue18_tallies_search
Revises: issue15_version_creator
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "issue18_tallies_search"
down_revision = "issue15_version_creator"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tally",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_tally")),
    )
    op.create_table(
        "tally_delta",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tally_delta")),
    )
    from deltazoo.registry import model_search, tallies

    bind = op.get_bind()
    tallies.install(bind)  # triggers first, then the recount, in this migration's transaction
    model_search.install(bind)


def downgrade() -> None:
    from deltazoo.registry import model_search, tallies

    bind = op.get_bind()
    model_search.drop(bind)
    tallies.drop(bind)
    op.drop_table("tally_delta")
    op.drop_table("tally")
