"""Lossy serving profiles of a version: requesting them and building them (``compression.deltadq``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import torch
from deltazoo.compression import deltadq
from deltazoo.registry.db import after_commit
from deltazoo.registry.errors import Conflict, NotFound
from deltazoo.registry.models import Artifact, Job, TextSet, Version
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import ArtifactRepository, JobRepository, TensorRepository
from deltazoo.services.profiles import check_profile
from deltazoo.services.storage import put_blob, read_blob, reconstruct, resolve_recipes
from sqlalchemy import select
from sqlalchemy.orm import Session

TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if hasattr(torch, _attr):
        TORCH_DTYPES[_name] = getattr(torch, _attr)


class ArtifactBuildError(RuntimeError):
    """The profile cannot be built for this version (recorded as the artifact's ``failed`` message)."""


def request_artifact(
    session: Session,
    version: Version,
    ref: str,
    profile: str,
    enqueue: Callable[[int], None],
) -> tuple[Artifact, Job]:
    profile = check_profile(profile)
    if version.status == "failed":
        raise Conflict(
            f"{ref} failed to encode ({version.status_message}); push it again", code="version_failed"
        )
    if version.parent_version_id is None:
        raise Conflict(f"{ref} has no base, so it has no delta to pack; push it with --base", code="no_base")
    no_text = session.scalar(select(TextSet.id).limit(1)) is None
    if no_text and deltadq.parse_profile(profile).needs_calibration:
        raise Conflict(
            f"{profile} calibrates on the first registered text, and there is none: register one first"
            " (deltazoo text add NAME FILE, or POST /v1/texts), then ask again",
            code="calibration_text_missing",
        )
    repo = ArtifactRepository(session)
    artifact = repo.by_profile(version.id, profile)
    if artifact is None:
        artifact = Artifact(version_id=version.id, profile=profile, status="pending", quality={})
        session.add(artifact)
    elif artifact.status == "failed":
        artifact.status, artifact.status_message = "pending", None
    if profile not in version.profiles:
        version.profiles = [*version.profiles, profile]
    session.flush()
    job = JobRepository(session).add("build_artifact", f"{ref}:{profile}", artifact.id)
    if version.status == "ready":
        job_id = job.id
        after_commit(session, lambda: enqueue(job_id))
    return artifact, job


def find_artifact(session: Session, version: Version, ref: str, profile: str) -> Artifact:
    profile = check_profile(profile)
    artifact = ArtifactRepository(session).by_profile(version.id, profile)
    if artifact is None and version.parent_version_id is None:
        raise NotFound(
            f"{ref} has no {profile} artifact: it has no base, so it has no delta to pack (serving profiles "
            "are built for versions pushed with --base)",
            code="artifact_not_found",
        )
    if artifact is None:
        raise NotFound(
            f"{ref} has no {profile} artifact; request it with POST .../artifacts", code="artifact_not_found"
        )
    if artifact.status != "ready" or artifact.blob is None:
        message = f" ({artifact.status_message})" if artifact.status_message else ""
        raise Conflict(
            f"artifact {profile} of {ref} is {artifact.status}{message}", code="artifact_not_ready"
        )
    return artifact


def enqueue_pending_artifacts(
    session: Session, version: Version, ref: str, enqueue: Callable[[int], None]
) -> None:
    """After an encode: start a build job for every artifact still pending (one job each)."""
    jobs = JobRepository(session)
    for artifact in ArtifactRepository(session).for_version(version.id):
        if artifact.status != "pending":
            continue
        job = jobs.latest_for("build_artifact", artifact.id)
        if job is None or job.status != "queued":
            job = jobs.add("build_artifact", f"{ref}:{artifact.profile}", artifact.id)
        job_id = job.id
        after_commit(session, lambda job_id=job_id: enqueue(job_id))  # type: ignore[misc]


def load_state(session: Session, store: ObjectStore, version_id: int) -> dict[str, torch.Tensor]:
    """A version's tensors as torch tensors (the whole model: only the artifact builder needs this)."""
    tensors = TensorRepository(session).for_version(version_id)
    recipes = resolve_recipes(session, tensors)
    state: dict[str, torch.Tensor] = {}
    for t in tensors:
        if t.dtype not in TORCH_DTYPES:
            raise ArtifactBuildError(f"tensor {t.name!r} has dtype {t.dtype}, which torch cannot load")
        raw = reconstruct(store, recipes[t.id])
        flat = (
            torch.frombuffer(bytearray(raw), dtype=TORCH_DTYPES[t.dtype])
            if raw
            else torch.empty(0, dtype=TORCH_DTYPES[t.dtype])
        )
        state[t.name] = flat.reshape(t.shape)
    return state


def _calibration(
    session: Session, store: ObjectStore, base_id: int, base: dict[str, torch.Tensor], profile: str
) -> dict[str, torch.Tensor]:
    """Input Hessians of the base model's linear layers on the first registered text, for the profiles
    that need calibration (fit=refit|gptq|obs, select=obs|search, alloc=sensitivity)."""
    from deltazoo.compression.calibration import collect_hessians
    from deltazoo.compression.quality import NotEvaluable, build_causal_lm
    from deltazoo.services.evaluation import load_tokenizer, version_config

    text = session.scalar(select(TextSet).order_by(TextSet.id).limit(1))
    if text is None or text.blob is None:
        raise ArtifactBuildError(f"{profile} needs a calibration text: register one with POST /v1/texts")
    base_version = session.get(Version, base_id)
    assert base_version is not None
    config = version_config(session, store, base_version)
    if config is None:
        raise ArtifactBuildError("calibrated profiles run the base model: its version needs a config.json")
    try:
        model = build_causal_lm(config, base)
        tokenizer = load_tokenizer(session, store, base_version)
        return collect_hessians(model, read_blob(store, text.blob).decode("utf-8"), tokenizer=tokenizer)
    except NotEvaluable as exc:
        raise ArtifactBuildError(f"calibrated profiles run the base model, which cannot run: {exc}") from exc


def build_stored_artifact(session: Session, store: ObjectStore, artifact: Artifact) -> None:
    """Build one artifact row's packed delta (``compression.deltadq.build_artifact``) and store it;
    raises ``ArtifactBuildError`` for a profile that cannot be built."""
    version = session.get(Version, artifact.version_id)
    assert version is not None
    if version.parent_version_id is None:
        raise ArtifactBuildError("the version has no base to take a delta against")
    base = load_state(session, store, version.parent_version_id)
    finetune = load_state(session, store, version.id)
    calibration = None
    if deltadq.parse_profile(artifact.profile).needs_calibration:
        calibration = _calibration(session, store, version.parent_version_id, base, artifact.profile)
    try:
        packed = deltadq.build_artifact(base, finetune, artifact.profile, calibration=calibration)
    except ValueError as exc:
        raise ArtifactBuildError(str(exc)) from exc
    if not packed.packed and packed.dense:  # a dense copy of the fine-tune, not a serving profile
        raise ArtifactBuildError(
            f"{artifact.profile} packs no layer of this fine-tune: no linear weight has its base's dtype"
            " and shape with rows that groups of m divide (an f32 fine-tune of a bf16 base, say), so it"
            " would be a dense copy; push the fine-tune in its base's dtype, or pick an m that divides"
            " its rows"
        )
    del base, finetune
    from deltazoo.compression.packed import save_artifact

    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        save_artifact(packed, path)
        with open(path, "rb") as f:
            data = f.read()
    finally:
        os.unlink(path)
    artifact.blob, _new = put_blob(session, store, data)
    artifact.bytes = len(data)
    artifact.status, artifact.status_message = "ready", None
    artifact.quality = {
        "packed_tensors": len(packed.packed),
        "dense_tensors": len(packed.dense),
        "packed_bytes": packed.nbytes,
    }
    session.flush()
