"""Running one ``evaluate`` job's work: bits-per-byte of a version and of its ready lossy profiles on one
text set (the rules; ``workers/jobs.py`` only dispatches here).

Models are rebuilt from storage (dense, bit-exact) with ``compression.quality.build_causal_lm`` and
run on ``settings.eval_device``; a profile is the parent's weights plus the unpacked packed delta
(``PackedArtifact.apply_to``). Memory: one whole model (two while a profile is applied) — evaluation
needs the model resident, unlike storage paths, which stay bounded by one tensor. torch and
transformers are imported when a job runs, not with this module.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

from deltazoo.registry.evaluation_repository import EvaluationRepository
from deltazoo.registry.models import Artifact, Evaluation, TextSet, Version
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import ArtifactRepository
from deltazoo.services.artifacts import ArtifactBuildError, load_state
from deltazoo.services.evaluation import DONE, load_tokenizer, version_config
from deltazoo.services.storage import read_blob
from sqlalchemy.orm import Session


class Evaluator:
    """Evaluates versions of one text, remembering what it built (the parent's weights, its bpb)."""

    def __init__(self, session: Session, store: ObjectStore, text: str, device: str) -> None:
        self.session, self.store, self.text, self.device = session, store, text, device
        self.states: dict[int, dict[str, Any]] = {}

    def state(self, version: Version) -> dict[str, Any]:
        if version.id not in self.states:
            self.states[version.id] = load_state(self.session, self.store, version.id)
        return self.states[version.id]

    def bpb(self, version: Version, state: dict[str, Any]) -> float:
        from deltazoo.compression.quality import NotEvaluable, bits_per_byte, build_causal_lm

        config = version_config(self.session, self.store, version)
        if config is None:
            raise NotEvaluable("the version has no readable config.json naming its architecture")
        tokenizer = load_tokenizer(self.session, self.store, version)
        model = build_causal_lm(config, state)
        try:
            bpb = bits_per_byte(model, tokenizer, self.text, device=self.device)
        finally:
            del model
        if not math.isfinite(bpb):  # NaN or infinite weights: no figure to rank (and JSON holds no NaN)
            raise NotEvaluable(f"its bits per byte on the text is not finite ({bpb}): NaN or inf weights")
        return bpb

    def dense(self, version: Version, row: Evaluation) -> float | None:
        """The version's dense bpb (computed into ``row`` unless done); None when not evaluable."""
        from deltazoo.compression.quality import NotEvaluable

        if row.status == "ready":
            return row.bits_per_byte
        if row.status == "not_evaluable":
            return None
        try:
            row.bits_per_byte = self.bpb(version, self.state(version))
            row.status, row.status_message = "ready", None
            row.details = {"ratio": round(8 / row.bits_per_byte, 4)}
        except (NotEvaluable, ArtifactBuildError) as exc:
            row.status, row.status_message = "not_evaluable", str(exc)
            row.bits_per_byte = None
        self.session.flush()
        return row.bits_per_byte

    def profile(self, version: Version, parent: Version, artifact: Artifact) -> float:
        from deltazoo.compression.packed import load_artifact

        fd, path = tempfile.mkstemp(suffix=".safetensors")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(read_blob(self.store, artifact.blob))  # type: ignore[arg-type]
            packed = load_artifact(path)
        finally:
            os.unlink(path)
        return self.bpb(version, packed.apply_to(self.state(parent)))


def gain_kept_or_none(bpb_base: float, bpb_ft: float, bpb_profile: float) -> float | None:
    """The share of the fine-tune's gain a profile keeps; None when the fine-tune did not gain here."""
    from deltazoo.compression.quality import gain_kept

    try:
        return round(gain_kept(bpb_base, bpb_ft, bpb_profile), 6)
    except ValueError:  # the fine-tune did not gain on this text: there is nothing to keep
        return None


def run_evaluation(
    session: Session, store: ObjectStore, evaluation_id: int, device: str, target: str
) -> None:
    """Fill the missing evaluation rows of one (version, text set), whose dense row is ``evaluation_id``
    (``target`` names it in the error when the row is gone)."""
    from deltazoo.compression.quality import NotEvaluable

    dense = session.get(Evaluation, evaluation_id)
    if dense is None:
        raise LookupError(f"evaluation of {target} no longer exists")
    version = session.get(Version, dense.version_id)
    text_set = session.get(TextSet, dense.text_set_id)
    assert version is not None and text_set is not None and text_set.blob is not None
    text = read_blob(store, text_set.blob).decode("utf-8")
    ev = Evaluator(session, store, text, device)
    rows = EvaluationRepository(session)
    bpb_ft = ev.dense(version, dense)
    parent = session.get(Version, version.parent_version_id) if version.parent_version_id else None
    for artifact in ArtifactRepository(session).for_version(version.id):
        if artifact.status != "ready":
            continue
        row = rows.profile(version, text_set, artifact.id)
        if row.status in DONE:
            continue
        bpb_base = ev.dense(parent, rows.dense(parent, text_set)) if parent else None
        if bpb_ft is None or bpb_base is None:
            why = dense.status_message if bpb_ft is None else "its base cannot be evaluated"
            row.status, row.status_message, row.bits_per_byte = "not_evaluable", why, None
            continue
        assert parent is not None
        try:
            bpb = ev.profile(version, parent, artifact)
        except NotEvaluable as exc:
            row.status, row.status_message, row.bits_per_byte = "not_evaluable", str(exc), None
            continue
        row.bits_per_byte, row.status, row.status_message = bpb, "ready", None
        row.details = {
            "ratio": round(8 / bpb, 4),
            "bpb_base": bpb_base,
            "bpb_finetune": bpb_ft,
            "gain_kept": gain_kept_or_none(bpb_base, bpb_ft, bpb),
        }
        session.flush()
