"""Bounded queries over a model's family for the model page: a page of children, and how many."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.models import Version
from registry.repositories import of_readable_versions


class FamilyRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def children_page(
        self,
        parent_ids: Sequence[int],
        *,
        exclude_model_id: int | None,
        limit: int,
        private_namespaces: list[str] | None,
    ) -> tuple[list[Version], int]:
        """The newest ``limit`` readable versions whose parent is in ``parent_ids`` (other than
        ``exclude_model_id``'s), and how many there are in all."""
        if not parent_ids:
            return [], 0
        q = select(Version).where(Version.parent_version_id.in_(list(parent_ids)))
        if exclude_model_id is not None:
            q = q.where(Version.model_id != exclude_model_id)
        q = of_readable_versions(q, private_namespaces)
        total = int(self.s.scalar(select(func.count()).select_from(q.subquery())) or 0)
        rows = list(self.s.scalars(q.order_by(Version.id.desc()).limit(limit)))
        return rows, total

    def newest_of_model(self, model_id: int, limit: int) -> tuple[list[Version], int]:
        q = select(Version).where(Version.model_id == model_id)
        total = int(self.s.scalar(select(func.count()).select_from(q.subquery())) or 0)
        rows = list(self.s.scalars(q.order_by(Version.revision.desc()).limit(limit)))
        return sorted(rows, key=lambda v: v.revision), total
