"""Job status for a caller: a job names its target (``org/name@rev...``), so a job of a model the
caller may not read answers 404 exactly like a job that does not exist."""

from __future__ import annotations

from deltazoo.registry.db import session_scope
from deltazoo.registry.errors import NotFound
from deltazoo.registry.models import Job
from deltazoo.registry.repositories import JobRepository, ModelRepository
from deltazoo.registry.settings import Settings
from deltazoo.services.access import Principal, can_read_model
from deltazoo.services.views import job_info
from sqlalchemy.orm import Session

from deltazoo import schemas


def job_for(session: Session, viewer: Principal, job_id: int) -> Job:
    job = JobRepository(session).get(job_id)
    if job is None or not can_read_job(session, viewer, job):
        raise NotFound(f"job {job_id} does not exist", code="job_not_found")
    return job


def can_read_job(session: Session, viewer: Principal, job: Job) -> bool:
    """Whether ``viewer`` may read the model the job works on (a deleted model's job: only a viewer
    that reads every model, since its name can no longer be checked)."""
    if viewer.private_namespaces() is None:
        return True
    org, _, name = job.target.partition("@")[0].partition("/")
    model = ModelRepository(session).get(org, name) if org and name else None
    return model is not None and can_read_model(viewer, model, org)


def job_answer(settings: Settings, viewer: Principal, job_id: int) -> schemas.Job:
    """What ``GET /v1/jobs/{id}`` answers, read in a session of its own: a long poll looks again and
    again, and holds no session (nor a pooled connection) in between."""
    with session_scope(settings) as session:
        return job_info(job_for(session, viewer, job_id))
