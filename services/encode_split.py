"""One version's encode split across workers: one part job per staged safetensors file, finished by a
counter in the job table.

A worker that may split (Celery workers; the embedded server's lanes already use every core of its one
process) runs a version's ``encode_version`` job like this:

1. with two or more staged safetensors files, ``plan_parts`` gives each its ``encode_file`` part job
   (created once, found again by a re-run) and the version's job waits (status ``waiting``: no worker
   holds it, the sweepers leave it alone);
2. any worker runs a part (``encode.encode_file``): the file's tensors, committed as they go and
   resumable like a whole encode (a re-run skips what an interrupted one committed);
3. a finished part marks itself ``succeeded`` and, holding the version job's row lock, counts its
   siblings: the last one puts the version's job back to ``queued`` in the same transaction and sends it
   after the commit (the outbox sweeper re-sends it if that message is lost);
4. the version's job runs again: every part has succeeded, so ``encode_version`` finds their tensors
   committed, stores the other files and marks the version ready.

The stored bytes do not depend on how many workers ran the parts, with one exception: a tensor whose
bytes also appear in another file of the same version is stored ``same`` of it when that file's part
committed first, else coded again (either decodes to the same bytes).
"""

from __future__ import annotations

from deltazoo.registry.models import File, Job, Version
from deltazoo.registry.repositories import PART_KIND, VERSION_KIND, FileRepository, JobRepository
from sqlalchemy import select
from sqlalchemy.orm import Session

WAITING = "waiting"


def staged_weight_files(session: Session, version: Version) -> list[File]:
    return [
        f
        for f in FileRepository(session).for_version(version.id)
        if f.kind == "safetensors" and f.staging_key is not None
    ]


def plan_parts(session: Session, version: Version, job: Job) -> tuple[list[Job], list[int]]:
    """The part jobs of ``version`` (none when it has fewer than two staged weight files) and the ids
    of those created now (to send once committed)."""
    files = staged_weight_files(session, version)
    if len(files) < 2:
        return [], []
    jobs = JobRepository(session)
    parts, created = [], []
    for f in files:
        part = jobs.latest_for(PART_KIND, f.id)
        if part is None:
            part = jobs.add(PART_KIND, f"{job.target}:{f.path}", f.id)
            created.append(part.id)
        parts.append(part)
    return parts, created


def finish_part(session: Session, version: Version, part: Job) -> int | None:
    """Mark ``part`` succeeded; when it was the last of its version's parts, put the version's waiting
    job back to ``queued`` and return its id (the caller sends it after the commit)."""
    part.status, part.progress = "succeeded", 1.0
    session.flush()
    parent = session.scalar(
        select(Job)
        .where(Job.kind == VERSION_KIND, Job.target_id == version.id)
        .order_by(Job.id.desc())
        .limit(1)
        .with_for_update()  # parts finishing at once count one after the other
    )
    if parent is None or parent.status != WAITING:
        return None
    file_ids = select(File.id).where(File.version_id == version.id)
    statuses = list(
        session.scalars(select(Job.status).where(Job.kind == PART_KIND, Job.target_id.in_(file_ids)))
    )
    done = sum(1 for s in statuses if s == "succeeded")
    if done < len(statuses):
        parent.progress = 0.99 * done / len(statuses)
        return None
    parent.status, parent.error = "queued", None
    return parent.id
