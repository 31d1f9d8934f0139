"""Queries of the sketch band index (``services.sketch_index``); they never commit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from deltazoo.registry.models import Model, SketchBand, Version
from sqlalchemy import ColumnElement, and_, delete, select, union_all
from sqlalchemy.orm import Session, undefer


class SketchBandRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def replace(self, version_id: int, keys: dict[int, int]) -> None:
        """The version's bands are ``keys`` (band -> key) from now on."""
        self.s.execute(delete(SketchBand).where(SketchBand.version_id == version_id))
        self.s.add_all(SketchBand(version_id=version_id, band=b, key=k) for b, k in keys.items())
        self.s.flush()

    def sharing(self, keys: dict[int, int], per_band: int, exclude: int) -> set[int]:
        """Ids of versions sharing a (band, key) with ``keys``: the newest ``per_band`` of each, one
        statement, each branch an index range scan on (band, key, version_id)."""
        if not keys:
            return set()
        branches = [
            select(SketchBand.version_id)
            .where(SketchBand.band == band, SketchBand.key == key, SketchBand.version_id != exclude)
            .order_by(SketchBand.version_id.desc())
            .limit(per_band)
            .subquery()
            .select()
            for band, key in keys.items()
        ]
        return set(self.s.scalars(union_all(*branches)))


def ready_candidates(
    session: Session, ids: Iterable[int], visible: ColumnElement[bool]
) -> list[Version]:
    """The ready versions with a sketch among ``ids`` whose model passes ``visible``."""
    ids = list(set(ids))
    if not ids:
        return []
    return list(
        session.scalars(
            select(Version)
            .options(undefer(Version.sketch))
            .join(Model, Model.id == Version.model_id)
            .where(and_(Version.id.in_(ids), Version.status == "ready", Version.sketch.is_not(None), visible))
        )
    )


def suggested_bases(session: Session, version_ids: Iterable[int]) -> dict[int, Any]:
    """version id -> the related version its commit found (``sketch["suggested"]``), without reading
    the rest of the sketch."""
    ids = list(set(version_ids))
    if not ids:
        return {}
    query = select(Version.id, Version.sketch["suggested"])
    rows = session.execute(query.where(Version.id.in_(ids), Version.sketch.is_not(None)))
    return {vid: suggested for vid, suggested in rows if suggested is not None}
