"""What a job's end means beyond its main work: what follows a finished encode or build, and what a
failed job means for the rows it worked on. ``workers/jobs.py`` only dispatches here (and commits)."""

from __future__ import annotations

from collections.abc import Callable

from deltazoo.registry.models import Artifact, File, Job, Version
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import PART_KIND, VERSION_KIND, ArtifactRepository, JobRepository
from deltazoo.services.artifacts import build_stored_artifact, enqueue_pending_artifacts
from deltazoo.services.evaluation import enqueue_for_version, mark_evaluation_failed
from sqlalchemy.orm import Session

Enqueue = Callable[[int], None]


def encode_finished(session: Session, version: Version, ref: str, enqueue: Enqueue) -> None:
    """Once a version is ready: build the profiles it asked for and evaluate it on every text set."""
    if version.status == "ready":
        enqueue_pending_artifacts(session, version, ref, enqueue)
        enqueue_for_version(session, version, enqueue)


def build_artifact_job(session: Session, store: ObjectStore, job: Job, enqueue: Enqueue) -> None:
    """A ``build_artifact`` job: build its artifact unless it is ready, then evaluate the profile."""
    artifact = session.get(Artifact, job.target_id)
    if artifact is None:
        raise LookupError(f"artifact {job.target} no longer exists")
    if artifact.status == "ready":
        return
    artifact.status = "building"
    build_stored_artifact(session, store, artifact)
    version = session.get(Version, artifact.version_id)
    if version is not None:
        enqueue_for_version(session, version, enqueue)


def record_job_failure(session: Session, job: Job, message: str) -> None:
    """The job failed: so does what it worked on, unless that is ready already. A version that failed
    to encode takes its pending profiles with it; a failed part of a split encode cancels the other
    parts and fails its version."""
    job.status, job.error = "failed", message
    if job.kind in (VERSION_KIND, PART_KIND):
        version_id = job.target_id
        if job.kind == PART_KIND:
            file = session.get(File, job.target_id)
            version_id = file.version_id if file is not None else 0
            JobRepository(session).cancel_encodes([version_id], f"{job.target} failed: {message}")
        version = session.get(Version, version_id)
        if version is not None and version.status != "ready":
            version.status, version.status_message = "failed", message
            for a in ArtifactRepository(session).for_version(version.id):
                if a.status != "ready":
                    a.status, a.status_message = "failed", "the version failed to encode"
    elif job.kind == "build_artifact":
        artifact = session.get(Artifact, job.target_id)
        if artifact is not None and artifact.status != "ready":
            artifact.status, artifact.status_message = "failed", message
    elif job.kind == "evaluate":
        mark_evaluation_failed(session, job.target_id, message)
