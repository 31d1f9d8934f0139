"""The leaderboard of one text set: versions and lossy profiles ranked by 8 / bpb (seed 004)."""

from __future__ import annotations

from typing import Any

from deltazoo.registry.models import Artifact, Evaluation, Version
from deltazoo.registry.repositories import ModelRepository
from deltazoo.services.access import OPEN, Principal, readable_models
from deltazoo.services.evaluation import evaluations_of_text, get_text, text_info
from deltazoo.services.refs import ref_string
from sqlalchemy.orm import Session


def compression_ratio(bpb: float | None) -> float | None:
    """The compression ratio an arithmetic coder driven by the model reaches: 8 / bpb."""
    return round(8 / bpb, 4) if bpb else None


NO_GAIN = "fine-tune did not gain here"


def gain_fields(details: dict[str, Any]) -> dict[str, Any]:
    """Gain kept of a profile, defined only where its fine-tune gained over the base on the text;
    else ``gain_kept`` is None and ``gain_note`` says so, with both bpb figures beside it."""
    base, ft = details.get("bpb_base"), details.get("bpb_finetune")
    gained = base is not None and ft is not None and base - ft > 0
    return {
        "gain_kept": details.get("gain_kept") if gained else None,
        "gain_note": None if gained or base is None or ft is None else NO_GAIN,
        "bpb_base": base,
        "bpb_finetune": ft,
    }


def entry(ev: Evaluation, version: Version, artifact: Artifact | None, name: str) -> dict[str, Any]:
    gain = (
        gain_fields(ev.details or {})
        if artifact
        else {"gain_kept": None, "gain_note": None, "bpb_base": None, "bpb_finetune": None}
    )
    return {
        "ref": ref_string(name, version.revision),
        "profile": artifact.profile if artifact else None,
        "bpb": ev.bits_per_byte,
        "ratio": compression_ratio(ev.bits_per_byte),
        **gain,
        "stored_bytes": artifact.bytes if artifact else version.stored_bytes,
        "logical_bytes": version.logical_bytes,
        "status": ev.status,
        "status_message": ev.status_message,
    }


def leaderboard(session: Session, text_name: str, viewer: Principal = OPEN) -> dict[str, Any]:
    """Every evaluation on the text of a model the ``viewer`` may read, best ratio first; unfinished or
    not evaluable ones last."""
    text = get_text(session, text_name)
    rows = evaluations_of_text(session, text)
    visible = readable_models(session, viewer, {v.model_id for _, v, _ in rows})
    rows = [row for row in rows if row[1].model_id in visible]
    names = ModelRepository(session).full_names(v.model_id for _, v, _ in rows)
    items = [entry(e, v, a, names[v.model_id]) for e, v, a in rows]
    items.sort(key=lambda i: (i["ratio"] is None, -(i["ratio"] or 0.0), i["ref"], i["profile"] or ""))
    return {"text": text_info(text), "items": items}


def version_quality(session: Session, version_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Per version: its dense evaluations ``{"text", "bpb", "ratio", "status"}`` (for the web pages)."""
    from deltazoo.services.evaluation import evaluations_of_versions

    out: dict[int, list[dict[str, Any]]] = {v: [] for v in version_ids}
    for ev, text in evaluations_of_versions(session, version_ids):
        if ev.artifact_id is None:
            out[ev.version_id].append(
                {
                    "text": text.name,
                    "bpb": ev.bits_per_byte,
                    "ratio": compression_ratio(ev.bits_per_byte),
                    "status": ev.status,
                }
            )
    return out
