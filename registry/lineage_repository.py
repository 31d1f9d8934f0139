"""Queries of a model's lineage: ancestors and descendants by recursive CTE (Postgres and SQLite),
descendants counted and paged in the database; they never commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from deltazoo.registry.models import Model, Namespace, Version
from deltazoo.registry.repositories import readable
from sqlalchemy import func, literal, select, union_all
from sqlalchemy.orm import Session

MAX_DEPTH = 10_000  # generations walked below a model's versions


class LineageRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def ancestor_ids(self, version_ids: Iterable[int]) -> set[int]:
        """Ids of every ancestor of ``version_ids`` (parents, their parents, ...), in one statement."""
        ids = list(set(version_ids))
        if not ids:
            return set()
        up = (
            select(Version.parent_version_id.label("id"))
            .where(Version.id.in_(ids), Version.parent_version_id.is_not(None))
            .cte("ancestors", recursive=True)
        )
        up = up.union(
            select(Version.parent_version_id).where(
                Version.id == up.c.id, Version.parent_version_id.is_not(None)
            )
        )
        return set(self.s.scalars(select(up.c.id)))

    def descendants(
        self,
        root_ids: Sequence[int],
        model_id: int,
        private_namespaces: Sequence[str] | None,
        after_id: int,
        limit: int,
    ) -> tuple[dict[str, int], list[int]]:
        """(relation -> how many versions of other models descend from ``root_ids``, at any depth; the ids
        of those after ``after_id``, by id, at most ``limit``), from one recursive walk in one statement.

        The walk reads only the covering index ``ix_version_lineage`` (parent, id, model, relation); a
        node's parent may sit on another page."""
        if not root_ids:
            return {}, []
        down = (
            select(
                Version.id.label("id"),
                Version.model_id.label("model_id"),
                Version.relation.label("relation"),
                literal(1).label("depth"),
            )
            .where(Version.parent_version_id.in_(list(root_ids)), Version.model_id != model_id)
            .cte("descendants", recursive=True)
        )
        # UNION ALL (no de-duplication to pay for): lineage has no cycles (a parent exists before its child
        # is committed); the depth bound still ends the walk if a corrupt row made one. The walk never
        # enters the model's own versions: each is a root already (a chain of 100 revisions walks the
        # other models below it once, not 100 + 99 + ... times)
        down = down.union_all(
            select(Version.id, Version.model_id, Version.relation, down.c.depth + 1).where(
                Version.parent_version_id == down.c.id, Version.model_id != model_id, down.c.depth < MAX_DEPTH
            )
        )
        found = select(down.c.id, down.c.relation).where(down.c.model_id != model_id)
        if private_namespaces is not None:
            found = (
                found.join(Model, Model.id == down.c.model_id)
                .join(Namespace, Namespace.id == Model.namespace_id)
                .where(readable(private_namespaces))
            )
        shown = found.cte("shown")
        counts = select(shown.c.relation, func.count().label("n"), literal(None).label("id")).group_by(
            shown.c.relation
        )
        page = select(shown.c.id).where(shown.c.id > after_id).order_by(shown.c.id).limit(limit).subquery()
        rows = self.s.execute(union_all(counts, select(literal(None), literal(None), page.c.id))).all()
        tally = {relation: int(n) for relation, n, vid in rows if vid is None and relation is not None}
        return tally, sorted(int(vid) for _, _, vid in rows if vid is not None)

    def readers(self, model_ids: Iterable[int]) -> dict[int, tuple[bool, str]]:
        """model id -> (private, namespace name), in one statement."""
        ids = list(set(model_ids))
        if not ids:
            return {}
        rows = self.s.execute(
            select(Model.id, Model.private, Namespace.name).join(Namespace).where(Model.id.in_(ids))
        )
        return {mid: (bool(private), org) for mid, private, org in rows}
