"""version.sketch without NaN or infinities: a Hub commit of a checkpoint whose sampled values held one
stored them as JSON's non-standard NaN / Infinity (services.similarity now writes null), which SQLite's
JSON functions refuse, so every read of that model answered 503. Postgres never accepted them: nothing
to do there.

Revision ID: sketch_non_finite
Revises: issue18_file_source_index
"""

from __future__ import annotations

import json
import math
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "sketch_non_finite"
down_revision = "issue18_file_source_index"
branch_labels = None
depends_on = None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    rows = bind.execute(
        sa.text("SELECT id, sketch FROM version WHERE sketch LIKE '%NaN%' OR sketch LIKE '%Infinity%'")
    ).all()
    for version_id, text in rows:
        clean = json.dumps(_finite(json.loads(text)))  # Python's json reads NaN and Infinity
        if clean != text:
            bind.execute(
                sa.text("UPDATE version SET sketch = :s WHERE id = :i"), {"s": clean, "i": version_id}
            )


def downgrade() -> None:
    pass  # null samples read as NaN: nothing to undo
