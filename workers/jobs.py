"""The job functions, shared by the Celery tasks and the in-process runner.

``run_job(job_id, context)`` reloads the job row and returns early when it is already finished, so
running a job twice is harmless. Transient errors (database or object store not answering) propagate
so the caller retries with backoff; any other error marks the job, and what it worked on, ``failed``
with a message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from deltazoo.registry.db import after_commit, session_scope
from deltazoo.registry.models import File, Job, Version, utcnow
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import PART_KIND, VERSION_KIND
from deltazoo.registry.settings import Settings
from deltazoo.services.artifacts import ArtifactBuildError
from deltazoo.services.encode import encode_file, encode_version
from deltazoo.services.encode_split import WAITING, encoded_files, finish_part, plan_parts, range_of
from deltazoo.services.job_outcomes import build_artifact_job, encode_finished, record_job_failure
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

log = logging.getLogger("deltazoo.jobs")
STALE_BEATS = 3  # a running job whose heartbeat is older than this many beats has lost its worker


def held_since(settings: Settings) -> timedelta:
    """How recent a running job's heartbeat must be for its worker to count as alive."""
    return timedelta(seconds=STALE_BEATS * settings.job_heartbeat_s)


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        sa_exc.OperationalError,
        sa_exc.IntegrityError,
        ConnectionError,
        TimeoutError,
    ]
    try:
        import urllib3.exceptions
        from minio.error import ServerError

        errors += [urllib3.exceptions.HTTPError, ServerError]
    except ImportError:  # the minio client is only needed with an S3 store
        pass
    return tuple(errors)


TRANSIENT_ERRORS = _transient_errors()


@dataclass
class JobContext:
    settings: Settings
    store: ObjectStore
    enqueue: Callable[[int], None]
    split: bool = False  # split a version's encode into part jobs (services.encode_split)


class _Checkpoints:
    """Progress on the job row, committed with the work at most once every ``job_commit_every_s`` (1 s).

    Committing as it goes keeps a long encode from holding the database's write lock (SQLite has one
    writer) and makes progress visible; the encode skips what an interrupted run already committed.
    """

    def __init__(self, session: Session, job: Job, every_s: float) -> None:
        self.session, self.job, self.every_s = session, job, every_s
        self.last = time.monotonic()

    def progress(self, fraction: float) -> None:
        self.job.progress = fraction

    def checkpoint(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.session.commit()
            self.last = now


def _encode(session: Session, job: Job, ctx: JobContext) -> str | None:
    version = session.get(Version, job.target_id)
    if version is None:
        raise LookupError(f"version {job.target} no longer exists")
    encoded: set[int] = set()
    if version.status == "processing" and ctx.split:
        parts, created = plan_parts(session, version, job, ctx.settings.encode_part_mb << 20)
        if any(p.status != "succeeded" for p in parts):
            job.status = WAITING  # the last part to finish sends this job again
            after_commit(session, partial(_send_all, ctx, created))
            return WAITING
        encoded = encoded_files(parts)
    if version.status == "processing":
        marks = _Checkpoints(session, job, ctx.settings.job_commit_every_s)
        encode_version(
            session,
            ctx.store,
            version,
            ctx.settings.max_chain_depth,
            marks.progress,
            marks.checkpoint,
            threads=_threads(ctx),
            chunk_bytes=ctx.settings.tensor_chunk_mb << 20,
            encoded=encoded,
        )
    encode_finished(session, version, job.target, ctx.enqueue)
    return None


def _encode_part(session: Session, job: Job, ctx: JobContext) -> str | None:
    file = session.get(File, job.target_id)
    version = session.get(Version, file.version_id) if file is not None else None
    if file is None or version is None:
        raise LookupError(f"{job.target} no longer exists")
    if version.status == "processing" and file.staging_key is not None:
        marks = _Checkpoints(session, job, ctx.settings.job_commit_every_s)
        encode_file(
            session,
            ctx.store,
            version,
            file,
            ctx.settings.max_chain_depth,
            marks.progress,
            marks.checkpoint,
            threads=_threads(ctx),
            chunk_bytes=ctx.settings.tensor_chunk_mb << 20,
            part=range_of(job.target),
        )
    parent = finish_part(session, version, job)
    if parent is not None:
        after_commit(session, partial(ctx.enqueue, parent))
    return None


def _threads(ctx: JobContext) -> int:
    """Encode lanes: the setting, else one per core this process may run on (its CPU affinity: a worker
    started under ``taskset -c 0`` has one lane, however many cores the host has)."""
    return ctx.settings.encode_threads or len(os.sched_getaffinity(0)) or 1


def _send_all(ctx: JobContext, job_ids: list[int]) -> None:
    for job_id in job_ids:
        ctx.enqueue(job_id)


def _build(session: Session, job: Job, ctx: JobContext) -> str | None:
    build_artifact_job(session, ctx.store, job, ctx.enqueue)
    return None


def _evaluate(session: Session, job: Job, ctx: JobContext) -> str | None:
    from deltazoo.services.evaluation_run import run_evaluation  # torch and transformers: evaluate jobs only

    run_evaluation(session, ctx.store, job.target_id, ctx.settings.eval_device, job.target)
    return None


# a handler returns None when its job is done, or WAITING when other jobs finish it (a split encode)
HANDLERS: dict[str, Callable[[Session, Job, JobContext], str | None]] = {
    VERSION_KIND: _encode,
    PART_KIND: _encode_part,
    "build_artifact": _build,
    "evaluate": _evaluate,
}


def mark_job_failed(ctx: JobContext, job_id: int, message: str) -> None:
    """Record a job, and what it worked on, as failed (also when transient errors never went away)."""
    with session_scope(ctx.settings) as s:
        job = s.get(Job, job_id)
        if job is not None:
            record_job_failure(s, job, message)


def run_job(job_id: int, ctx: JobContext) -> str:
    """Run one job to the end; returns its final status (raises on transient errors, for a retry)."""
    with session_scope(ctx.settings) as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist", job_id)
            return "missing"
        if job.status in ("succeeded", "failed"):
            return job.status
        if job.status == "running" and job.updated_at >= utcnow() - held_since(ctx.settings):
            # a second message for a job a live worker holds (a re-send raced its pick-up): leave it
            log.info("job %s is held by a live worker; this message is dropped", job_id)
            return "running"
        if job.kind not in HANDLERS:
            job.status, job.error = "failed", f"unknown job kind {job.kind!r}"
            return "failed"
        job.status, job.attempts, job.error = "running", job.attempts + 1, None
    try:
        with session_scope(ctx.settings) as s:
            job = s.get(Job, job_id)
            assert job is not None
            if HANDLERS[job.kind](s, job, ctx) == WAITING:
                return WAITING
            job.status, job.progress = "succeeded", 1.0
        return "succeeded"
    except TRANSIENT_ERRORS as exc:
        log.warning("job %s hit a transient error, will retry: %s", job_id, exc)
        with session_scope(ctx.settings) as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.status, job.error = "queued", f"retrying after: {exc}"
        raise
    except ArtifactBuildError as exc:  # a profile this fine-tune cannot have: the user's to act on, no bug
        log.warning("job %s failed: %s", job_id, exc)
        mark_job_failed(ctx, job_id, str(exc))
        return "failed"
    except Exception as exc:  # a non-transient failure is recorded, not raised
        log.exception("job %s failed", job_id)
        mark_job_failed(ctx, job_id, f"{type(exc).__name__}: {exc}")
        return "failed"
