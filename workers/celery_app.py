"""The Celery app of the full stack (``deltazoo worker`` runs it; the broker is Redis)."""

from __future__ import annotations

import logging

from celery import Celery
from deltazoo.registry.settings import Settings, get_settings

RUN_JOB_TASK = "deltazoo.run_job"
log = logging.getLogger("deltazoo.dispatch")

# The longest a job may run. Messages are acknowledged late (after the job), so the broker's visibility
# timeout is fitted above it: a long encode is never handed to a second worker while the first one still
# works on it. A killed worker's job does not wait for that timeout: the heartbeat reaper sends it again
# after three missed beats (workers/heartbeat.py).
TASK_TIME_LIMIT_S = 6 * 3600
VISIBILITY_TIMEOUT_S = TASK_TIME_LIMIT_S + 600


def make_celery(settings: Settings) -> Celery:
    app = Celery("deltazoo", broker=settings.broker_url or "memory://", include=["deltazoo.workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT_S,
        task_soft_time_limit=TASK_TIME_LIMIT_S - 60,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_concurrency=settings.worker_concurrency,
    )
    return app


app = make_celery(get_settings())


class CeleryDispatcher:
    """Sends a job to the Celery workers (used by the API and by jobs that start other jobs).

    The job row is already committed (workers/outbox.py): when the broker does not answer, the send is
    logged and the reapers send the job once the broker is back, so a commit never fails on the broker.
    """

    def __init__(self, celery: Celery = app) -> None:
        self.celery = celery

    def submit(self, job_id: int) -> None:
        from deltazoo.workers.outbox import task_id

        try:
            self.celery.send_task(
                RUN_JOB_TASK,
                args=[job_id],
                task_id=task_id(job_id),
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:  # noqa: BLE001 - kombu/redis raise many types for "broker down"
            log.warning(
                "job %s stays queued: the broker did not take its message (%s); "
                "a worker's reaper sends it when the broker answers",
                job_id,
                exc,
            )
