"""Queries of evaluation rows and text sets; they never commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deltazoo.registry.models import Artifact, Evaluation, Model, Namespace, TextSet, Version
from deltazoo.registry.repositories import readable
from sqlalchemy import Select, func, select, true, tuple_
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

    def ranked(
        self,
        text_id: int,
        private_namespaces: Sequence[str] | None,
        limit: int,
        offset: int,
        counts: tuple[int, int] | None = None,
        after: tuple[float | None, int] | None = None,
    ) -> tuple[int, int, list[tuple[Evaluation, Version, Artifact | None]]]:
        """(how many have a bpb, how many in all, the page ``offset``..``offset + limit``) of the
        evaluations on a text of models the caller may read (None: all): by bpb ascending (best ratio
        first), then those without a bpb by id. Reads ``ix_evaluation_text_bpb`` in order. ``counts``
        (ranked, total), when the caller has them (the counters), saves counting. With ``after`` (the
        (bpb, id) of the last row of the previous page; bpb None: an unranked row) the page starts
        after that row instead of at ``offset``: a range of the index, however deep the page."""
        of_text = (
            select(Evaluation, Version, Artifact)
            .join(Version, Version.id == Evaluation.version_id)
            .outerjoin(Artifact, Artifact.id == Evaluation.artifact_id)
            .where(Evaluation.text_set_id == text_id)
        )
        if private_namespaces is not None:
            of_text = (
                of_text.join(Model, Model.id == Version.model_id)
                .join(Namespace, Namespace.id == Model.namespace_id)
                .where(readable(private_namespaces))
            )
        has_bpb = Evaluation.bits_per_byte > 0
        ranked_q, unranked_q = (
            of_text.where(has_bpb),
            of_text.where(~has_bpb | Evaluation.bits_per_byte.is_(None)),
        )
        if counts is not None:
            ranked, total = counts
        else:
            ranked = int(self.s.scalar(select(func.count()).select_from(ranked_q.subquery())) or 0)
            total = ranked + int(self.s.scalar(select(func.count()).select_from(unranked_q.subquery())) or 0)
        rows: list[Any] = []
        if after is not None:
            return ranked, total, self._after(ranked_q, unranked_q, after, limit)
        if offset < ranked:
            rows += self.s.execute(
                ranked_q.order_by(Evaluation.bits_per_byte, Evaluation.id).offset(offset).limit(limit)
            ).all()
        if len(rows) < limit and offset + len(rows) < total:
            rows += self.s.execute(
                unranked_q.order_by(Evaluation.id).offset(max(0, offset - ranked)).limit(limit - len(rows))
            ).all()
        return ranked, total, [(e, v, a) for e, v, a in rows]

    def _after(
        self, ranked_q: Select, unranked_q: Select, after: tuple[float | None, int], limit: int
    ) -> list[tuple[Evaluation, Version, Artifact | None]]:
        bpb, last_id = after
        rows: list[Any] = []
        if bpb is not None:
            past = tuple_(Evaluation.bits_per_byte, Evaluation.id) > tuple_(bpb, last_id)
            rows += self.s.execute(
                ranked_q.where(past).order_by(Evaluation.bits_per_byte, Evaluation.id).limit(limit)
            ).all()
        if len(rows) < limit:
            past_unranked = Evaluation.id > last_id if bpb is None else true()
            rows += self.s.execute(
                unranked_q.where(past_unranked).order_by(Evaluation.id).limit(limit - len(rows))
            ).all()
        return [(e, v, a) for e, v, a in rows]
