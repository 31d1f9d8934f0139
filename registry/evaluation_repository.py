"""Queries of evaluation rows and text sets; they never commit."""

from __future__ import annotations

from deltazoo.registry.models import Evaluation, TextSet, Version
from sqlalchemy import select
from sqlalchemy.orm import Session


class EvaluationRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def find(self, version_id: int, text_id: int, artifact_id: int | None) -> Evaluation | None:
        """The row of a version (``artifact_id`` None: its dense weights) or one of its profiles on a text."""
        of_artifact = Evaluation.artifact_id == artifact_id
        q = select(Evaluation).where(
            Evaluation.version_id == version_id,
            Evaluation.text_set_id == text_id,
            Evaluation.artifact_id.is_(None) if artifact_id is None else of_artifact,
        )
        return self.s.scalars(q.order_by(Evaluation.id)).first()

    def dense(self, version: Version, text: TextSet) -> Evaluation:
        """The version's dense row on ``text``, added as ``pending`` when it has none."""
        row = self.find(version.id, text.id, None)
        if row is None:
            row = Evaluation(version_id=version.id, text_set_id=text.id, status="pending", details={})
            self.s.add(row)
            self.s.flush()
        return row

    def profile(self, version: Version, text: TextSet, artifact_id: int) -> Evaluation:
        """The row of one of the version's profiles on ``text``, added when it has none."""
        row = self.find(version.id, text.id, artifact_id)
        if row is None:
            row = Evaluation(version_id=version.id, artifact_id=artifact_id, text_set_id=text.id, details={})
            self.s.add(row)
        return row
