"""The job table is the outbox: a job is a row first and a broker message second.

``commit`` records the version and its ``queued`` job in one transaction and sends the message after
the commit; when the broker does not answer, the send is only logged (the commit still answers 202).
Every worker's reaper thread then calls ``resend_unsent`` each beat: a ``queued`` job older than the
grace period with no message in the broker (neither waiting in a queue nor delivered and unacknowledged)
is sent again. Rows are locked with SKIP LOCKED and their ``updated_at`` touched, so two reapers never
both send one; a duplicate message is harmless anyway (``run_job`` drops a job a live worker holds and
returns early for a finished one).

Which jobs have a message is read from the Redis transport's own keys: each queue (a list per priority)
and the ``unacked`` hash, where a message names its task id, ``deltazoo-job-<id>-<nonce>``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable

from deltazoo.registry.db import session_scope
from deltazoo.registry.models import Job, utcnow
from deltazoo.workers.jobs import JobContext, held_since
from sqlalchemy import select

log = logging.getLogger("deltazoo.outbox")
_TASK_ID = re.compile(rb"deltazoo-job-(\d+)-")


def task_id(job_id: int) -> str:
    return f"deltazoo-job-{job_id}-{uuid.uuid4().hex[:12]}"


def live_job_ids(celery: object) -> set[int] | None:
    """Ids of the jobs with a message in the broker; None when the broker cannot be read (down, or a
    transport other than Redis): then nothing is re-sent this round."""
    try:
        with celery.connection_for_read() as conn:  # type: ignore[attr-defined]
            channel = conn.default_channel
            client = getattr(channel, "client", None)
            if client is None or not hasattr(channel, "_q_for_pri"):
                return None
            queue = celery.conf.task_default_queue  # type: ignore[attr-defined]
            raw: list[bytes] = []
            for pri in channel.priority_steps:
                raw += client.lrange(channel._q_for_pri(queue, pri), 0, -1)
            raw += client.hvals(channel.unacked_key)
    except Exception as exc:  # noqa: BLE001 - broker away: try again on the next beat
        log.info("cannot read the broker's queues (%s); unsent jobs are checked on the next beat", exc)
        return None
    ids: set[int] = set()
    for item in raw:
        data = item if isinstance(item, bytes) else str(item).encode()
        ids.update(int(m) for m in _TASK_ID.findall(data))
    return ids


def resend_unsent(ctx: JobContext, submit: Callable[[int], None], live: set[int]) -> list[int]:
    """Send again each ``queued`` job older than the grace period whose id is not in ``live``."""
    cutoff = utcnow() - held_since(ctx.settings)
    with session_scope(ctx.settings) as s:
        waiting = list(
            s.scalars(
                select(Job)
                .where(Job.status == "queued", Job.updated_at < cutoff)
                .order_by(Job.id)
                .with_for_update(skip_locked=True)
            )
        )
        unsent = [job for job in waiting if job.id not in live]
        for job in unsent:
            job.updated_at = utcnow()
        ids = [job.id for job in unsent]
    for job_id in ids:
        log.warning("job %s is queued with no message in the broker; sending it again", job_id)
        submit(job_id)
    return ids
