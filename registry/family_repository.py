"""Bounded queries for the model page: a page of a version's other children, a model card's file."""

from __future__ import annotations

from collections.abc import Sequence

from deltazoo.registry.models import File, Version
from deltazoo.registry.repositories import of_readable_versions
from sqlalchemy import func, select
from sqlalchemy.orm import Session


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
        rows = list(self.s.scalars(q.order_by(Version.id.desc()).limit(limit)))
        return rows, int(self.s.scalar(select(func.count()).select_from(q.subquery())) or 0)

    def first_file(self, version_id: int, paths: Sequence[str]) -> File | None:
        """The version's file at the first of ``paths`` it has (one query)."""
        rows = list(
            self.s.scalars(select(File).where(File.version_id == version_id, File.path.in_(list(paths))))
        )
        by_path = {f.path: f for f in rows}
        return next((by_path[p] for p in paths if p in by_path), None)
