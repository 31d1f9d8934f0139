"""The ``lineage_descendant`` index kept in step with ``version.parent_version_id``.

A version ``d`` has one row per other model owning one of its ancestors (parent, its parent, ...), so
a model's descendants are read from an index (``registry.lineage_repository``) instead of walked.
Rows are written in the flush that adds a version or sets, moves or cuts its parent (same
transaction: a rollback leaves no row behind), by a walk up from the version (as long as its
ancestry, not its family); a moved or cut parent rewrites the rows of the version's whole subtree.
Rows of a deleted version or model go by ``ON DELETE CASCADE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deltazoo.registry.models import Version
from sqlalchemy import bindparam, event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

MAX_DEPTH = 10_000  # generations walked; lineage has no cycles, the bound ends a corrupt one

_ROWS_OF = text(
    """
    INSERT INTO lineage_descendant (ancestor_model_id, version_id, model_id, relation, private)
    WITH RECURSIVE up (version_id, ancestor_id, depth) AS (
        SELECT id, parent_version_id, 1 FROM version
        WHERE id IN :ids AND parent_version_id IS NOT NULL
        UNION ALL
        SELECT up.version_id, v.parent_version_id, up.depth + 1
        FROM up JOIN version v ON v.id = up.ancestor_id
        WHERE v.parent_version_id IS NOT NULL AND up.depth < :max_depth
    )
    SELECT DISTINCT a.model_id, d.id, d.model_id, d.relation, m.private
    FROM up
    JOIN version a ON a.id = up.ancestor_id
    JOIN version d ON d.id = up.version_id
    JOIN model m ON m.id = d.model_id
    WHERE a.model_id <> d.model_id
    """
).bindparams(bindparam("ids", expanding=True))

_SUBTREE = text(
    """
    WITH RECURSIVE down (id, depth) AS (
        SELECT id, 0 FROM version WHERE id IN :ids
        UNION ALL
        SELECT v.id, down.depth + 1 FROM version v JOIN down ON v.parent_version_id = down.id
        WHERE down.depth < :max_depth
    )
    SELECT DISTINCT id FROM down
    """
).bindparams(bindparam("ids", expanding=True))

_DROP = text("DELETE FROM lineage_descendant WHERE version_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)

BATCH = 5000  # ids per statement


def add_rows(conn: Connection, version_ids: Sequence[int]) -> None:
    """Write the rows of ``version_ids`` (which have none yet), walking up from each."""
    ids = sorted(set(version_ids))
    for i in range(0, len(ids), BATCH):
        conn.execute(_ROWS_OF, {"ids": ids[i : i + BATCH], "max_depth": MAX_DEPTH})


def rewrite_subtrees(conn: Connection, version_ids: Sequence[int]) -> None:
    """Rewrite the rows of ``version_ids`` and of every version below them (their ancestry changed)."""
    if not version_ids:
        return
    subtree = [
        int(i)
        for i in conn.execute(_SUBTREE, {"ids": sorted(set(version_ids)), "max_depth": MAX_DEPTH}).scalars()
    ]
    for i in range(0, len(subtree), BATCH):
        conn.execute(_DROP, {"ids": subtree[i : i + BATCH]})
    add_rows(conn, subtree)


def _ancestry_changed(version: Version) -> bool:
    state = inspect(version)
    return any(state.attrs[key].history.has_changes() for key in ("parent_version_id", "relation"))


@event.listens_for(Session, "after_flush")
def _keep_index(session: Session, _context: Any) -> None:
    new = [o.id for o in session.new if isinstance(o, Version) and o.parent_version_id is not None]
    moved = [
        o.id
        for o in session.dirty
        if isinstance(o, Version) and o not in session.deleted and _ancestry_changed(o)
    ]
    if not new and not moved:
        return
    conn = session.connection()
    add_rows(conn, new)
    rewrite_subtrees(conn, moved)
