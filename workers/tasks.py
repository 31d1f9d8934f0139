"""Thin Celery tasks: take a job id, run the shared job function, retry transient errors with backoff."""

from __future__ import annotations

from functools import lru_cache

from celery import Task
from celery.signals import worker_ready
from deltazoo.registry.memory import bound_heap, release_free_memory
from deltazoo.registry.objectstore import object_store_from_settings
from deltazoo.registry.settings import get_settings
from deltazoo.services.storage import RAW_CACHE
from deltazoo.workers.celery_app import RUN_JOB_TASK, CeleryDispatcher, app
from deltazoo.workers.heartbeat import heartbeat, start_reaper
from deltazoo.workers.jobs import TRANSIENT_ERRORS, JobContext, mark_job_failed, run_job


@lru_cache(maxsize=1)
def worker_context() -> JobContext:
    settings = get_settings()
    bound_heap()
    RAW_CACHE.max_bytes = settings.tensor_cache_mb << 20
    store = object_store_from_settings(settings)
    return JobContext(settings, store, CeleryDispatcher(app).submit, split=settings.encode_split)


class JobTask(Task):  # type: ignore[misc]
    """Records the job as failed when Celery gives up on it (retries exhausted, time limit)."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: object) -> None:
        if args:
            mark_job_failed(worker_context(), int(args[0]), f"gave up: {type(exc).__name__}: {exc}")


@app.task(
    base=JobTask,
    name=RUN_JOB_TASK,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=8,
    acks_late=True,
)
def run_job_task(job_id: int) -> str:
    ctx = worker_context()
    try:
        with heartbeat(ctx, job_id):
            return run_job(job_id, ctx)
    finally:
        release_free_memory()


@worker_ready.connect
def _start_reaper(**_kwargs: object) -> None:
    """Jobs whose worker died (no heartbeat) or whose message never reached the broker are sent again by
    any live worker (workers/heartbeat.py, workers/outbox.py)."""
    from deltazoo.workers.outbox import live_job_ids

    start_reaper(worker_context(), CeleryDispatcher(app).submit, lambda: live_job_ids(app))
