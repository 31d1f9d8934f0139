"""The leaderboard of one text set: versions and lossy profiles ranked by 8 / bpb (seed 004)."""

from __future__ import annotations

from typing import Any

from deltazoo.registry.errors import Unprocessable
from deltazoo.registry.evaluation_repository import EvaluationRepository
from deltazoo.registry.models import Artifact, Evaluation, Version
from deltazoo.registry.repositories import ModelRepository
from deltazoo.registry.tallies import TallyRepository, text_keys
from deltazoo.services.access import OPEN, Principal
from deltazoo.services.evaluation import get_text, text_info
from deltazoo.services.refs import ref_string
from sqlalchemy.orm import Session


def compression_ratio(bpb: float | None) -> float | None:
    """The compression ratio an arithmetic coder driven by the model reaches: 8 / bpb."""
    return round(8 / bpb, 4) if bpb else None


NO_GAIN = "fine-tune did not gain here"
MIN_GAIN_BPB = 0.01  # a smaller gain is noise: a share of it read -5394 % for a 0.002 bpb gain
SMALL_GAIN = f"fine-tune gained under {MIN_GAIN_BPB} bpb here: too little to take a share of"


def gain_fields(details: dict[str, Any]) -> dict[str, Any]:
    """Gain kept of a profile, defined only where its fine-tune gained over the base on the text by at
    least ``MIN_GAIN_BPB``; else ``gain_kept`` is None and ``gain_note`` says why, with both bpb
    figures beside it."""
    base, ft = details.get("bpb_base"), details.get("bpb_finetune")
    gain = base - ft if base is not None and ft is not None else None
    gained = gain is not None and gain >= MIN_GAIN_BPB
    note = None if gained or gain is None else (NO_GAIN if gain <= 0 else SMALL_GAIN)
    return {
        "gain_kept": details.get("gain_kept") if gained else None,
        "gain_note": note,
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


DEFAULT_PAGE = 100
MAX_OFFSET = 2**63 - 1  # what the database's OFFSET takes
MAX_PAGE = 1000


def _cursor_of(ev: Evaluation) -> str:
    """Where the next page starts: after this row (``<bpb>:<id>``, or ``-:<id>`` for an unranked one)."""
    bpb = ev.bits_per_byte
    return f"{float(bpb)!r}:{ev.id}" if bpb is not None and bpb > 0 else f"-:{ev.id}"


def parse_cursor(cursor: str) -> tuple[float | None, int]:
    bpb, _, last_id = cursor.partition(":")
    try:
        after = (None if bpb == "-" else float(bpb), int(last_id))
        if after[0] is not None and not 0 < after[0] < float("inf") or not 0 < after[1] < 2**63:
            raise ValueError(cursor)
        return after
    except ValueError:
        raise Unprocessable(
            f"cursor {cursor[:40]!r} is not one this server gave; pass the previous page's next_cursor"
            " unchanged, or no cursor for the first page",
            code="invalid_cursor",
        ) from None


def leaderboard(
    session: Session,
    text_name: str,
    viewer: Principal = OPEN,
    limit: int = DEFAULT_PAGE,
    offset: int = 0,
    cursor: str | None = None,
) -> dict[str, Any]:
    """One page of the evaluations on the text of models the ``viewer`` may read, best ratio (lowest
    bpb) first, unfinished or not evaluable ones last; ``total`` counts them all. Ranked and paged in
    the database on ``ix_evaluation_text_bpb``, the totals from the counters: the first page costs the
    same in a zoo of any size, and so does every page read by ``cursor`` (``next_cursor`` of the page
    before: a range of the index) where a deep ``offset`` skips the rows before it one by one."""
    if not 1 <= limit <= MAX_PAGE:
        raise Unprocessable(f"limit must be between 1 and {MAX_PAGE} (got {limit})", code="invalid_limit")
    if not 0 <= offset <= MAX_OFFSET:
        raise Unprocessable(f"offset must be between 0 and 2**63 - 1 (got {offset})", code="invalid_offset")
    if cursor and offset:
        raise Unprocessable("give a cursor or an offset, not both", code="invalid_offset")
    after = parse_cursor(cursor) if cursor else None
    text = get_text(session, text_name)
    allowed = viewer.private_namespaces()
    ranked, total, rows = EvaluationRepository(session).ranked(
        text.id, allowed, limit + 1, offset, _counted(session, text.id, allowed), after
    )
    more, rows = len(rows) > limit, rows[:limit]
    names = ModelRepository(session).full_names(v.model_id for _, v, _ in rows)
    items = [entry(e, v, a, names[v.model_id]) for e, v, a in rows]
    return {
        "text": text_info(text),
        "items": items,
        "total": total,
        "ranked": ranked,
        "offset": offset,
        "next_cursor": _cursor_of(rows[-1][0]) if more else None,
    }


def _counted(session: Session, text_id: int, allowed: list[str] | None) -> tuple[int, int] | None:
    """(ranked, total) on the text from the counters (``registry.tallies``) when the viewer may read
    every evaluation (all namespaces, or no private model exists); None: count what it may read."""
    counts = TallyRepository(session).totals()
    if allowed is not None and counts.get("private_models", 0) > 0:
        return None
    every, ranked = text_keys(text_id)
    return counts.get(ranked, 0), counts.get(every, 0)


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
