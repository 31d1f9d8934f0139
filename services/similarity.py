"""Detecting a version's parent (``base="auto"``) from a small per-tensor sketch of its values.

Sketch: for up to ``MAX_TENSORS`` float tensors (chosen by a hash of the name, so every version picks
the same ones), the ``SAMPLES`` consecutive elements starting at an offset derived from the name and
shape. It is read from the staged upload at commit time with one ranged read per tensor (files the
server already held are sketched from the version that holds them), and stored on the version.

Similarity of an upload U to a stored version C: per sketched tensor of U, ``rel = rms(u − c) /
rms(c − mean(c))`` when C has a tensor of the same name, dtype and shape (``rel = 1`` otherwise, and
identical samples give 0); ``similarity = 1 − median(min(rel, 1))``. An independent model of the same
architecture has ``rel ≈ √2`` (two draws of one distribution), i.e. similarity 0; a fine-tune whose
weights moved by a few per cent of their spread scores above 0.9. ``RELATED_THRESHOLD`` = 0.5 sits
between the two (docs/REST.md, "Auto-detected parent", gives the measured figures).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from deltazoo.compression.safetensors_io import SafetensorsError, read_header
from deltazoo.registry.lineage_repository import LineageRepository
from deltazoo.registry.models import File, Model, Version
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import FileRepository, ModelRepository, TensorRepository, visible_from
from deltazoo.registry.sketch_band_repository import SketchBandRepository, ready_candidates
from deltazoo.services.refs import ref_string
from deltazoo.services.sketch_index import PER_BAND, band_keys
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

SAMPLES = 64
MAX_TENSORS = 64
RELATED_THRESHOLD = 0.5
# a candidate whose distance (1 - similarity) is within 25 % (or 0.001) of the best one's counts as a tie
ANCESTOR_MARGIN = 0.25
ANCESTOR_FLOOR = 0.001
SKETCH_VERSION = 1
_FLOATS = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": None}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def sample_window(name: str, shape: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """(first element, count) of the sampled run of a tensor: a pure function of its name and shape."""
    numel = int(np.prod(shape)) if len(shape) else 1
    count = min(SAMPLES, numel)
    start = _hash(f"{name}|{list(shape)}") % (numel - count + 1)
    return start, count


def decode_floats(raw: bytes, dtype: str) -> np.ndarray:
    """Little-endian float bytes of a safetensors dtype as float64 values."""
    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    return np.frombuffer(raw, dtype=np.dtype(_FLOATS[dtype]).newbyteorder("<")).astype(np.float64)


def json_floats(values: np.ndarray) -> list[float | None]:
    """The samples as JSON can hold them: a NaN or an infinity (an inf mask buffer, a diverged weight) as
    None (null; JSON has no NaN, and Postgres and SQLite refuse it), which reads back as NaN."""
    return [v if np.isfinite(v) else None for v in values.tolist()]


def sample_values(entry: dict[str, Any]) -> np.ndarray:
    """A sketch entry's samples as float64, null (a non-finite sample) as NaN."""
    return np.asarray(entry.get("values") or (), dtype=np.float64)


def _chosen(names: list[str]) -> set[str]:
    return set(sorted(names, key=_hash)[:MAX_TENSORS])


def sketch_upload(session: Session, store: ObjectStore, version: Version) -> dict[str, Any]:
    """The sketch of a committed-but-not-encoded version, from its staged files (ranged reads)."""
    entries: dict[str, dict[str, Any]] = {}
    tensors = TensorRepository(session)
    for f in FileRepository(session).for_version(version.id):
        if f.kind != "safetensors":
            continue
        if f.staging_key is None:
            entries.update(_copied_entries(session, f, tensors))
            continue
        key = f.staging_key

        def read_at(offset: int, length: int, key: str = key) -> bytes:
            return store.get_range(key, offset, length)

        try:
            header = read_header(read_at, f.size)
        except SafetensorsError:
            continue  # uploads were validated; a bad one fails in the encode job with the reason
        for t in header.tensors:
            if t.dtype not in _FLOATS or t.nbytes == 0:
                continue
            start, count = sample_window(t.name, t.shape)
            size = _ITEMSIZE[t.dtype]
            raw = read_at(header.header_size + t.begin + start * size, count * size)
            values = decode_floats(raw, t.dtype)
            entries[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "values": json_floats(values)}
    keep = _chosen(list(entries))
    return {
        "v": SKETCH_VERSION,
        "tensors": {n: e for n, e in entries.items() if n in keep},
    }


def _copied_entries(session: Session, file: File, tensors: TensorRepository) -> dict[str, Any]:
    """A file the server already held: its tensors' entries from the sketch of the version holding it."""
    source = session.get(File, file.source_file_id) if file.source_file_id else None
    holder = session.get(Version, source.version_id) if source else None
    if source is None or holder is None or not holder.sketch:
        return {}
    names = {t.name for t in tensors.for_file(source.id)}
    return {n: e for n, e in (holder.sketch.get("tensors") or {}).items() if n in names}


def similarity(upload: dict[str, Any], candidate: dict[str, Any]) -> float:
    """1 − median over the upload's sketched tensors of min(rel, 1) (module docstring); 0 when none."""
    mine = upload.get("tensors") or {}
    theirs = candidate.get("tensors") or {}
    if not mine:
        return 0.0
    rels = []
    for name, e in mine.items():
        c = theirs.get(name)
        if c is None or c["dtype"] != e["dtype"] or c["shape"] != e["shape"]:
            rels.append(1.0)
            continue
        rels.append(_rel(sample_values(e), sample_values(c)))
    return round(1.0 - float(np.median(rels)), 4)


def _rel(u: np.ndarray, v: np.ndarray) -> float:
    """min(rms(u − v) / rms(v − mean(v)), 1) over the samples finite in both; a sample non-finite (NaN:
    stored as null) in one only makes them unrelated, in both it counts as equal (a -inf mask in both)."""
    if u.shape != v.shape:
        return 1.0
    lost_u, lost_v = np.isnan(u), np.isnan(v)
    if np.any(lost_u != lost_v):
        return 1.0
    u, v = u[~lost_u], v[~lost_v]
    diff = float(np.sqrt(np.mean((u - v) ** 2))) if u.size else 0.0
    spread = float(np.sqrt(np.mean((v - v.mean()) ** 2))) if v.size else 0.0
    if diff == 0.0:
        return 0.0
    if not np.isfinite(diff) or spread == 0.0:
        return 1.0
    return min(diff / spread, 1.0)


def rank_candidates(
    session: Session, version: Version, sketch: dict[str, Any]
) -> list[tuple[Version, float]]:
    """Related ready versions, most similar first: those sharing a sketch band key with the upload
    (``services.sketch_index``: at most ``PER_BAND`` per band, found on an index) and their
    ancestors, so the work is bounded whatever the size of the zoo. Of public models, and for a private
    model also of the private models of its own namespace (never another namespace's private model:
    neither its name nor its bytes may show through this one)."""
    own = session.get(Model, version.model_id)
    visible: ColumnElement[bool] = visible_from(own) if own is not None else Model.private.is_(False)
    ids = SketchBandRepository(session).sharing(band_keys(sketch), PER_BAND, exclude=version.id)
    ids |= LineageRepository(session).ancestor_ids(ids)
    ids.discard(version.id)
    rows = ready_candidates(session, ids, visible)
    scored = [(v, similarity(sketch, v.sketch or {})) for v in rows]
    scored.sort(key=lambda pair: (-pair[1], -pair[0].id))
    return prefer_ancestor(session, scored)


def prefer_ancestor(session: Session, ranked: list[tuple[Version, float]]) -> list[tuple[Version, float]]:
    """Among candidates about as close as the best (distance ``1 - similarity`` within ``ANCESTOR_MARGIN``
    of the best one's, relatively), put first the one that is an ancestor of the most others: a base and
    its fine-tunes all resemble a new sibling fine-tune about equally (zoo: writer vs base 0.892, vs coder
    0.889), and the base is the parent a user means. The margin is relative so that a chain stays a
    chain: a fine-tune of ``c3`` (distance 0.01) is not given ``c0`` (0.022), its ancestor three steps up."""
    if len(ranked) < 2:
        return ranked
    reach = (1.0 - ranked[0][1]) * (1.0 + ANCESTOR_MARGIN) + ANCESTOR_FLOOR
    near = [(v, s) for v, s in ranked if 1.0 - s <= reach]
    ids = {v.id for v, _ in near}
    below: dict[int, int] = dict.fromkeys(ids, 0)  # candidate id -> near candidates it is an ancestor of
    for v, _ in near:
        seen, parent_id = set(), v.parent_version_id
        while parent_id is not None and parent_id not in seen:
            seen.add(parent_id)
            if parent_id in ids:
                below[parent_id] += 1
            parent = session.get(Version, parent_id)
            parent_id = parent.parent_version_id if parent else None
    best = max(near, key=lambda pair: below[pair[0].id])  # max keeps the first (best score) on ties
    return [best, *[p for p in ranked if p[0].id != best[0].id]]


def sketch_and_resolve(session: Session, store: ObjectStore, version: Version) -> dict[str, Any] | None:
    """At commit: store the version's sketch; set the parent when ``base="auto"`` was asked for.

    Returns the best related stored version as ``{"ref", "similarity"}`` (or None); with auto it is
    the parent. A version created with a base keeps it; one created without keeps no parent, and the
    suggestion is only reported.
    """
    auto = bool((version.sketch or {}).get("auto_base")) and version.parent_version_id is None
    sketch = sketch_upload(session, store, version)
    best = None
    ranked = rank_candidates(session, version, sketch)
    if ranked and ranked[0][1] >= RELATED_THRESHOLD:
        parent, score = ranked[0]
        names = ModelRepository(session).full_names([parent.model_id])
        best = {"ref": ref_string(names[parent.model_id], parent.revision), "similarity": score}
        if auto:
            version.parent_version_id, version.parent_similarity = parent.id, score
    sketch["auto_base"] = auto
    sketch["suggested"] = best
    version.sketch = sketch
    SketchBandRepository(session).replace(version.id, band_keys(sketch))
    return best


def mark_auto_base(version: Version, *, card_first: bool = False) -> None:
    """Remember at create time that the parent is to be detected at commit (``base="auto"``). With
    ``card_first`` (a Hub commit, which names no base) a model card's ``base_model`` wins over it."""
    version.sketch = {"auto_base": True, "card_first": True} if card_first else {"auto_base": True}
