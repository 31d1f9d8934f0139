"""Queries of a model's lineage: ancestors by recursive CTE (as long as the ancestry), descendants
counted and paged from the ``lineage_descendant`` index (as long as the page); they never commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from deltazoo.registry.models import LineageDescendant, Model, Namespace, Version
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased


class LineageRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def ancestor_ids(self, version_ids: Iterable[int]) -> set[int]:
        """Ids of every ancestor of ``version_ids`` (parents, their parents, ...), in one statement.

        Each step reads a parent by primary key (a correlated scalar subquery), so the walk costs the
        ancestry's length whatever the planner guesses: written as a join, Postgres hashed the whole
        version table at every step once a few ids were asked for."""
        ids = list(set(version_ids))
        if not ids:
            return set()
        up = (
            select(Version.parent_version_id.label("id"))
            .where(Version.id.in_(ids))
            .cte("ancestors", recursive=True)
        )
        step = aliased(Version)
        parent_of = select(step.parent_version_id).where(step.id == up.c.id).scalar_subquery()
        up = up.union(select(parent_of).where(up.c.id.is_not(None)))  # a root's parent: NULL, then stop
        return set(self.s.scalars(select(up.c.id).where(up.c.id.is_not(None))))

    def descendants(
        self,
        model_id: int,
        private_namespaces: Sequence[str] | None,
        after_id: int,
        limit: int,
    ) -> tuple[dict[str, int], list[Version]]:
        """(relation -> how many versions of other models descend from the model's versions, at any
        depth; those after id ``after_id``, by id, at most ``limit``), from the index
        ``lineage_descendant`` (``registry.lineage_index``): two index range reads, no walk."""
        rows = select(LineageDescendant).where(LineageDescendant.ancestor_model_id == model_id)
        if private_namespaces is not None:
            rows = rows.where(
                LineageDescendant.private.is_(False)
                | LineageDescendant.model_id.in_(
                    select(Model.id)
                    .join(Namespace, Namespace.id == Model.namespace_id)
                    .where(Model.private.is_(True), Namespace.name.in_(list(private_namespaces)))
                )
            )
        shown = rows.subquery()
        counts = select(shown.c.relation, func.count()).group_by(shown.c.relation)
        page = (
            select(Version)
            .join(shown, shown.c.version_id == Version.id)
            .where(shown.c.version_id > after_id)
            .order_by(shown.c.version_id)
            .limit(limit)
        )
        tally = {relation: int(n) for relation, n in self.s.execute(counts)}
        return tally, list(self.s.scalars(page))

    def readers(self, model_ids: Iterable[int]) -> dict[int, tuple[bool, str, str]]:
        """model id -> (private, namespace name, model name), in one statement."""
        ids = list(set(model_ids))
        if not ids:
            return {}
        rows = self.s.execute(
            select(Model.id, Model.private, Namespace.name, Model.name)
            .join(Namespace)
            .where(Model.id.in_(ids))
        )
        return {mid: (bool(private), org, name) for mid, private, org, name in rows}
