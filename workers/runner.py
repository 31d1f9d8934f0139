"""The in-process job runner of the embedded default: a small thread pool running ``run_job``."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from deltazoo.registry.db import session_scope
from deltazoo.registry.repositories import JobRepository
from deltazoo.workers.jobs import TRANSIENT_ERRORS, JobContext, mark_job_failed, run_job

log = logging.getLogger("deltazoo.runner")


class InProcessRunner:
    """Runs jobs in this process; jobs left ``queued`` or ``running`` by a previous process are re-run."""

    def __init__(self, ctx: JobContext, retries: int = 4, backoff_s: float = 0.5) -> None:
        self.ctx = ctx
        self.retries = retries
        self.backoff_s = backoff_s
        self.pool = ThreadPoolExecutor(
            max(1, ctx.settings.worker_concurrency), thread_name_prefix="deltazoo-job"
        )
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
            self.pool.submit(self._run, job_id)

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
        self.pool.shutdown(wait=wait, cancel_futures=True)
