"""Queries of a model's lineage: ancestors and descendants by recursive CTE (Postgres and SQLite),
descendants counted and paged in the database; they never commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import CTE, Select, func, select
from sqlalchemy.orm import Session

from registry.models import Model, Namespace, Version
from registry.repositories import readable


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

    def _descendants(self, root_ids: Sequence[int]) -> CTE:
        down = (
            select(Version.id.label("id")).where(Version.parent_version_id.in_(list(root_ids)))
        ).cte("descendants", recursive=True)
        return down.union(select(Version.id).where(Version.parent_version_id == down.c.id))

    def _of(
        self, query: Select, root_ids: Sequence[int], model_id: int, private_namespaces: Sequence[str] | None
    ) -> Select:
        down = self._descendants(root_ids)
        query = query.join(down, down.c.id == Version.id).where(Version.model_id != model_id)
        if private_namespaces is not None:
            query = (
                query.join(Model, Model.id == Version.model_id)
                .join(Namespace, Namespace.id == Model.namespace_id)
                .where(readable(private_namespaces))
            )
        return query

    def descendant_counts(
        self, root_ids: Sequence[int], model_id: int, private_namespaces: Sequence[str] | None
    ) -> dict[str, int]:
        """relation -> how many versions of other models descend from ``root_ids`` (any depth)."""
        if not root_ids:
            return {}
        query = self._of(
            select(Version.relation, func.count()), root_ids, model_id, private_namespaces
        ).group_by(Version.relation)
        return {relation: int(n) for relation, n in self.s.execute(query)}

    def descendant_page(
        self,
        root_ids: Sequence[int],
        model_id: int,
        private_namespaces: Sequence[str] | None,
        after_id: int,
        limit: int,
    ) -> list[Version]:
        """Descendants (of other models) with id > ``after_id``, by id, at most ``limit``. A parent is
        always older than its child, so a page by id holds each node's parent or an earlier page does."""
        if not root_ids:
            return []
        query = self._of(select(Version), root_ids, model_id, private_namespaces)
        return list(self.s.scalars(query.where(Version.id > after_id).order_by(Version.id).limit(limit)))

    def readers(self, model_ids: Iterable[int]) -> dict[int, tuple[bool, str]]:
        """model id -> (private, namespace name), in one statement."""
        ids = list(set(model_ids))
        if not ids:
            return {}
        rows = self.s.execute(
            select(Model.id, Model.private, Namespace.name).join(Namespace).where(Model.id.in_(ids))
        )
        return {mid: (bool(private), org) for mid, private, org in rows}
