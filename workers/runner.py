"""The in-process job runner of the embedded default: a small thread pool running ``run_job``."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from deltazoo.registry.db import session_scope
from deltazoo.registry.models import Job
from deltazoo.registry.repositories import JobRepository
from deltazoo.workers.jobs import TRANSIENT_ERRORS, JobContext, mark_job_failed, run_job

log = logging.getLogger("deltazoo.runner")


BACKGROUND_KINDS = ("evaluate",)  # run in a lane of their own: never ahead of an encode or a build


class InProcessRunner:
    """Runs jobs in this process; jobs left ``queued`` or ``running`` by a previous process are re-run.

    Evaluations have a lane of their own (one thread): registering a text queues one for every ready
    version and profile, minutes of work, and a push waiting behind them took minutes to encode."""

    def __init__(self, ctx: JobContext, retries: int = 4, backoff_s: float = 0.5) -> None:
        self.ctx = ctx
        self.retries = retries
        self.backoff_s = backoff_s
        self.pool = ThreadPoolExecutor(
            max(1, ctx.settings.worker_concurrency), thread_name_prefix="deltazoo-job"
        )
        self.background = ThreadPoolExecutor(1, thread_name_prefix="deltazoo-eval")
        self._stopped = threading.Event()

    def start(self) -> None:
        with session_scope(self.ctx.settings) as s:
            unfinished = JobRepository(s).unfinished()
            for job in unfinished:  # a previous process ran it: nobody holds it now
                job.status = "queued"
            leftover = [j.id for j in unfinished]
        for job_id in leftover:
            self.submit(job_id)

    def submit(self, job_id: int) -> None:
        if not self._stopped.is_set():
            lane = self.background if self._kind(job_id) in BACKGROUND_KINDS else self.pool
            lane.submit(self._run, job_id)

    def _kind(self, job_id: int) -> str | None:
        with session_scope(self.ctx.settings) as s:
            job = s.get(Job, job_id)
            return job.kind if job is not None else None

    def _run(self, job_id: int) -> None:
        for attempt in range(self.retries + 1):
            if self._stopped.is_set():
                return
            try:
                run_job(job_id, self.ctx)
                return
            except TRANSIENT_ERRORS:
                time.sleep(self.backoff_s * 2**attempt)
            except Exception:  # run_job records failures itself; this is a bug in the runner's path
                log.exception("job %s crashed", job_id)
                return
        log.error("job %s gave up after %s transient errors", job_id, self.retries + 1)
        message = f"gave up after {self.retries + 1} attempts that hit transient errors"
        mark_job_failed(self.ctx, job_id, message)

    def stop(self, wait: bool = True) -> None:
        self._stopped.set()
        for lane in (self.pool, self.background):
            lane.shutdown(wait=wait, cancel_futures=True)
