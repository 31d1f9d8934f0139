"""Crash recovery for Celery jobs: a running job beats a heartbeat; a stale one is queued again.

A worker killed mid-job (SIGKILL, out of memory, a lost host) leaves its Redis message unacknowledged
until the broker's visibility timeout (an hour) and the job row ``running`` for good. So the worker
running a job touches the job row's ``updated_at`` every ``job_heartbeat_s`` seconds, and a reaper
thread in every worker sends again each ``running`` job whose heartbeat is older than
``STALE_BEATS`` beats (rows locked with SKIP LOCKED, so two reapers never both send it). Running a
job twice is harmless: ``run_job`` resumes and skips the work an interrupted run committed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deltazoo.registry.db import session_scope
from deltazoo.registry.models import Job, utcnow
from deltazoo.workers.jobs import JobContext, held_since
from sqlalchemy import select, update

log = logging.getLogger("deltazoo.heartbeat")


def beat(ctx: JobContext, job_id: int) -> None:
    with session_scope(ctx.settings) as s:
        s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(updated_at=utcnow()))


@contextmanager
def heartbeat(ctx: JobContext, job_id: int) -> Iterator[None]:
    """Beat for ``job_id`` in a background thread while the body runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(ctx.settings.job_heartbeat_s):
            try:
                beat(ctx, job_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried on the next one
                log.warning("heartbeat of job %s failed: %s", job_id, exc)

    thread = threading.Thread(target=loop, name=f"deltazoo-heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def requeue_stale(ctx: JobContext, submit: Callable[[int], None]) -> list[int]:
    """Put ``running`` jobs whose heartbeat stopped back to ``queued`` and send them; returns their ids.

    Rows locked by a live transaction (a worker committing its progress) are skipped: that worker is
    alive. A killed worker's connection closes with it, and so do its locks.
    """
    cutoff = utcnow() - held_since(ctx.settings)
    with session_scope(ctx.settings) as s:
        stale = list(
            s.scalars(
                select(Job)
                .where(Job.status == "running", Job.updated_at < cutoff)
                .with_for_update(skip_locked=True)
            )
        )
        for job in stale:
            job.status, job.error = "queued", "its worker stopped answering; sent again"
        sent = [job.id for job in stale]
    for job_id in sent:
        log.warning("job %s lost its worker; sending it again", job_id)
        submit(job_id)
    return sent


def start_reaper(
    ctx: JobContext,
    submit: Callable[[int], None],
    live: Callable[[], set[int] | None] | None = None,
) -> threading.Event:
    """A daemon thread that, every beat, calls ``requeue_stale`` and, when ``live`` can read the broker,
    ``outbox.resend_unsent`` (queued jobs whose message was never sent or was lost); set the returned
    event to stop it."""
    from deltazoo.workers.outbox import resend_unsent

    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                requeue_stale(ctx, submit)
                held = live() if live is not None else None
                if held is not None:
                    resend_unsent(ctx, submit, held)
            except Exception as exc:  # noqa: BLE001 - database or broker away: try again on the next beat
                log.warning("job sweep failed: %s", exc)
            if stop.wait(ctx.settings.job_heartbeat_s):
                return

    threading.Thread(target=loop, name="deltazoo-reaper", daemon=True).start()
    return stop
