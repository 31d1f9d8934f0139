"""Read-side rules: the answers of docs/REST.md (summaries, details, stats) built from the rows as the
response contract's models (``deltazoo/schemas.py``, which the SDK parses), and the manifest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deltazoo.registry.models import Artifact, File, Job, Model, TensorChunk, Version
from deltazoo.registry.repositories import (
    ArtifactRepository,
    FileRepository,
    ModelRepository,
    ReadableTotals,
    TagRepository,
    TensorChunkRepository,
    TensorRepository,
    VersionRepository,
)
from deltazoo.registry.sketch_band_repository import suggested_bases
from deltazoo.registry.tallies import TallyRepository
from deltazoo.services.access import OPEN, Principal, readable_versions
from deltazoo.services.refs import ref_string
from deltazoo.services.transfer import require_ready
from sqlalchemy.orm import Session

from deltazoo import schemas


def ratio(logical: int, stored: int) -> float | None:
    return round(logical / stored, 4) if stored else None


def _names(session: Session, versions: list[Version]) -> dict[int, str]:
    return ModelRepository(session).full_names(v.model_id for v in versions)


def version_summaries(
    session: Session,
    versions: list[Version],
    viewer: Principal = OPEN,
    *,
    known: Sequence[Version] = (),
    names: dict[int, str] | None = None,
) -> list[schemas.VersionSummary]:
    """Summaries of ``versions``; a parent the ``viewer`` may not read is not named (``parent`` null).

    Parents among ``versions`` or ``known`` and model names in ``names`` (model id -> full name), rows
    the caller has already read, are not read again."""
    wanted = {v.parent_version_id for v in versions if v.parent_version_id}
    parent_ids = readable_versions(session, viewer, wanted)
    loaded = {v.id: v for v in [*versions, *known]}
    parents = {i: loaded[i] for i in parent_ids if i in loaded}
    parents |= VersionRepository(session).get_many(parent_ids - parents.keys())
    names = dict(names or {})
    rows = [*versions, *parents.values()]
    names |= _names(session, [v for v in rows if v.model_id not in names])
    artifact_bytes = ArtifactRepository(session).bytes_by_version(v.id for v in versions)
    suggested = suggested_bases(session, [v.id for v in versions if v.parent_version_id is None])
    tags = TagRepository(session).names_by_version(v.id for v in versions)
    out = []
    for v in versions:
        p = parents.get(v.parent_version_id) if v.parent_version_id else None
        out.append(
            schemas.VersionSummary(
                name=names[v.model_id],
                revision=v.revision,
                ref=ref_string(names[v.model_id], v.revision),
                parent=ref_string(names[p.model_id], p.revision) if p else None,
                relation=v.relation if v.parent_version_id else None,  # a root has no relation
                status=v.status,
                status_message=v.status_message,
                logical_bytes=v.logical_bytes,
                stored_bytes=v.stored_bytes,
                artifact_bytes=artifact_bytes.get(v.id, 0),
                ratio=ratio(v.logical_bytes, v.stored_bytes) if v.status == "ready" else None,
                lossy=v.lossy,
                created_at=v.created_at,
                parent_similarity=v.parent_similarity,
                suggested_base=suggested.get(v.id) if v.parent_version_id is None else None,
                commit_id=v.commit_id,
                tags=tuple(tags.get(v.id, ())),
            )
        )
    return out


def model_summaries(session: Session, models: list[tuple[Model, str]]) -> list[schemas.ModelSummary]:
    totals = VersionRepository(session).totals_by_model(m.id for m, _ in models)
    out = []
    for m, full in models:
        n, latest, logical, stored = totals.get(m.id, (0, None, 0, 0))
        out.append(
            schemas.ModelSummary(
                name=full,
                description=m.description,
                private=m.private,
                versions=n,
                latest_revision=latest,
                logical_bytes=logical,
                stored_bytes=stored,
                ratio=ratio(logical, stored),
                created_at=m.created_at,
            )
        )
    return out


def model_detail(session: Session, model: Model, full_name: str, viewer: Principal = OPEN) -> schemas.Model:
    summary = model_summaries(session, [(model, full_name)])[0]
    versions = version_summaries(session, VersionRepository(session).for_model(model.id), viewer)
    return schemas.Model(**{**dict(summary), "versions": tuple(versions)})


def file_info(f: File) -> schemas.FileInfo:
    return schemas.FileInfo(
        path=f.path, size=f.size, sha256=f.sha256, kind=f.kind, original_sha256=f.original_sha256
    )


def artifact_info(a: Artifact) -> schemas.Artifact:
    return schemas.Artifact(
        profile=a.profile,
        status=a.status,
        status_message=a.status_message,
        bytes=a.bytes,
        quality=a.quality or {},
        created_at=a.created_at,
    )


def job_info(j: Job) -> schemas.Job:
    return schemas.Job(
        id=j.id,
        kind=j.kind,
        target=j.target,
        status=j.status,
        attempts=j.attempts,
        progress=j.progress,
        error=j.error,
        created_at=j.created_at,
        updated_at=j.updated_at,
    )


def chain(session: Session, version: Version, viewer: Principal = OPEN) -> list[Version]:
    """This version, its parent, ... to the root."""
    out = [version]
    seen = {version.id}
    repo = VersionRepository(session)
    while out[-1].parent_version_id is not None and out[-1].parent_version_id not in seen:
        parent = repo.get(out[-1].parent_version_id)
        if parent is None or not readable_versions(session, viewer, {parent.id}):
            break
        seen.add(parent.id)
        out.append(parent)
    return out


def _parent_refs(
    session: Session, parent_ids: set[int], viewer: Principal
) -> dict[int, tuple[str, str, str]]:
    """tensor id -> (version ref, file path, tensor name) for the given parent tensors that the
    ``viewer`` may read (a ``same`` twin or delta parent in a model it may not read is never named)."""
    tensors = TensorRepository(session).get_many(parent_ids)
    visible = readable_versions(session, viewer, {t.version_id for t in tensors.values()})
    tensors = {i: t for i, t in tensors.items() if t.version_id in visible}
    files = {
        f.id: f
        for vid in {t.version_id for t in tensors.values()}
        for f in FileRepository(session).for_version(vid)
    }
    versions = VersionRepository(session).get_many(t.version_id for t in tensors.values())
    names = _names(session, list(versions.values()))
    out = {}
    for t in tensors.values():
        v = versions[t.version_id]
        out[t.id] = (ref_string(names[v.model_id], v.revision), files[t.file_id].path, t.name)
    return out


def _refs(session: Session, versions: list[Version]) -> tuple[str, ...]:
    names = _names(session, versions)
    return tuple(ref_string(names[v.model_id], v.revision) for v in versions)


def version_detail(session: Session, version: Version, viewer: Principal = OPEN) -> schemas.VersionDetail:
    summary = version_summaries(session, [version], viewer)[0]
    files = FileRepository(session).for_version(version.id)
    paths = {f.id: f.path for f in files}
    tensors = TensorRepository(session).for_version(version.id)
    parents = _parent_refs(session, {t.parent_tensor_id for t in tensors if t.parent_tensor_id}, viewer)
    return schemas.VersionDetail(
        **dict(summary),
        files=tuple(file_info(f) for f in files),
        tensors=tuple(
            schemas.TensorInfo(
                file=paths[t.file_id],
                name=t.name,
                dtype=t.dtype,
                shape=tuple(t.shape),
                sha256=t.sha256,
                encoding=t.encoding,
                logical_bytes=t.offset_end - t.offset_begin,
                stored_bytes=t.stored_bytes,
                parent=":".join(parents[t.parent_tensor_id]) if t.parent_tensor_id in parents else None,
            )
            for t in tensors
        ),
        artifacts=tuple(artifact_info(a) for a in ArtifactRepository(session).for_version(version.id)),
        chain=_refs(session, chain(session, version, viewer)),
    )


def _chunk_info(c: TensorChunk) -> dict[str, Any]:
    return {"begin": c.begin, "end": c.end, "encoding": c.encoding, "blob": c.blob, "sha256": c.sha256}


def manifest(session: Session, version: Version, ref: str, viewer: Principal = OPEN) -> dict[str, Any]:
    require_ready(version, ref, "its manifest (what it stores) is there")
    files = FileRepository(session).for_version(version.id)
    tensors = TensorRepository(session).for_version(version.id)
    parent_rows = TensorRepository(session).get_many(
        t.parent_tensor_id for t in tensors if t.parent_tensor_id
    )
    parents = _parent_refs(session, set(parent_rows), viewer)
    chunks = TensorChunkRepository(session).for_tensors(t.id for t in tensors if t.chunks)
    by_file: dict[int, list[dict[str, Any]]] = {f.id: [] for f in files}
    for t in tensors:
        p = parent_rows.get(t.parent_tensor_id) if t.parent_tensor_id in parents else None
        by_file[t.file_id].append(
            {
                "name": t.name,
                "dtype": t.dtype,
                "shape": t.shape,
                "offset": [t.offset_begin, t.offset_end],
                "sha256": t.sha256,
                "encoding": t.encoding,
                "blob": t.blob,
                "chunks": [_chunk_info(c) for c in chunks[t.id]] if t.id in chunks else None,
                "parent": None
                if p is None
                else {
                    "ref": parents[p.id][0],
                    "file": parents[p.id][1],
                    "name": p.name,
                    "sha256": p.sha256,
                    "dtype": p.dtype,
                    "shape": p.shape,
                },
            }
        )
    return {
        "ref": ref,
        "files": [
            {
                **file_info(f).model_dump(),
                "blob": f.blob,
                "header_blob": f.header_blob,
                "tensors": by_file[f.id],
            }
            for f in files
        ],
    }


def stats(session: Session, viewer: Principal = OPEN) -> schemas.Stats:
    """Whole-zoo totals, read from the counters the database keeps (``registry.tallies``): a few rows
    however large the zoo. A viewer who may not read every model gets the totals of what it may read,
    counted from the rows (so a private push changes no number an outsider sees; its blobs are those
    its versions reference, which a counter of the whole zoo cannot tell apart)."""
    allowed = viewer.private_namespaces()
    if allowed is not None:
        totals = ReadableTotals(session, allowed).as_dict()
        return schemas.Stats(**totals, ratio=ratio(totals["logical_bytes"], totals["stored_bytes"]))
    counts = TallyRepository(session).totals()
    logical, stored = counts.get("ready_logical_bytes", 0), counts.get("blob_bytes", 0)
    return schemas.Stats(
        models=counts.get("models", 0),
        versions=counts.get("versions", 0),
        files=counts.get("files", 0),
        tensors=counts.get("tensors", 0),
        blobs=counts.get("blobs", 0),
        logical_bytes=logical,
        stored_bytes=stored,
        artifact_bytes=ArtifactRepository(session).blob_bytes(),
        ratio=ratio(logical, stored),
        encodings=TallyRepository.encodings(counts),
    )
