"""The Celery app of the full stack (``deltazoo worker`` runs it; the broker is Redis)."""

from __future__ import annotations

from celery import Celery

from deltazoo.settings import Settings, get_settings

RUN_JOB_TASK = "deltazoo.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("deltazoo", broker=settings.broker_url or "memory://", include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=6 * 3600,
        task_soft_time_limit=6 * 3600 - 60,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_concurrency=settings.worker_concurrency,
    )
    return app


app = make_celery(get_settings())


class CeleryDispatcher:
    """Sends a job to the Celery workers (used by the API and by jobs that start other jobs)."""

    def __init__(self, celery: Celery = app) -> None:
        self.celery = celery

    def submit(self, job_id: int) -> None:
        self.celery.send_task(RUN_JOB_TASK, args=[job_id])
