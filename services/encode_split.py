"""One version's encode split across workers: part jobs (a staged safetensors file, or a range of its
tensors when the file is large), finished by a counter in the job table.

A worker that may split (Celery workers; the embedded server's lanes already use every core of its one
process) runs a version's ``encode_version`` job like this:

1. ``plan_parts`` cuts the staged safetensors files into parts: a file of up to ``part_bytes``
   (``DELTAZOO_ENCODE_PART_MB``) is one part, a larger one ``ceil(size / part_bytes)`` tensor ranges
   (``tensor_range``: consecutive tensors, about equal bytes, cut at tensor boundaries, so a file of a
   few huge tensors yields fewer, larger ranges). With two or more parts each gets its ``encode_file``
   job (created once: a re-run finds the same jobs, whatever the setting says then) and the version's
   job waits (status ``waiting``: no worker holds it, the sweepers leave it alone);
2. any worker runs a part (``encode.encode_file``): its tensors, committed as they go and resumable
   like a whole encode (a re-run skips the tensors of its file already committed). A range part is
   named in its job's target (``org/name@2:model.safetensors [2/4]``), so every worker cuts the file
   the same way and two parts never encode the same tensor; the file's header blob is stored by its
   first range;
3. a finished part marks itself ``succeeded`` and, holding the version job's row lock, counts its
   siblings: the last one puts the version's job back to ``queued`` in the same transaction and sends it
   after the commit (the outbox sweeper re-sends it if that message is lost);
4. the version's job runs again: every part has succeeded, so ``encode_version`` leaves their files
   alone (``encoded_files``: no header re-read, no tensor rows loaded), stores the other files and
   marks the version ready.

Parts are sent largest first (``largest_first``), so that the small ones fill the end.

The stored bytes do not depend on how many workers ran the parts, with one exception: a tensor whose
bytes also appear in another part of the same version is stored ``same`` of it when that part
committed first, else coded again (either decodes to the same bytes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from deltazoo.compression.safetensors_io import TensorEntry
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


def part_count(file: File, part_bytes: int) -> int:
    """How many tensor ranges a split encode cuts ``file`` into (1: the whole file is one part)."""
    return max(1, -(-file.size // max(1, part_bytes)))


_RANGE = re.compile(r" \[(\d+)/(\d+)\]$")


def range_target(file_target: str, index: int, count: int) -> str:
    """The job target of range ``index`` (0-based) of ``count``; a whole file's part is ``file_target``."""
    return file_target if count == 1 else f"{file_target} [{index + 1}/{count}]"


def range_of(target: str) -> tuple[int, int] | None:
    """(index, count) of a range part's target, None for a whole-file part (a weight file's path ends
    in ``.safetensors``, never in ``[k/n]``)."""
    match = _RANGE.search(target)
    if match is None:
        return None
    number, count = int(match.group(1)), int(match.group(2))
    if not 1 <= number <= count:
        raise ValueError(f"part target {target!r} names no range of its file")
    return number - 1, count


def tensor_range(entries: Sequence[TensorEntry], index: int, count: int) -> list[TensorEntry]:
    """Range ``index`` of ``count`` of a file's tensors (in offset order, covering the data section
    contiguously): a tensor belongs to the range its middle byte falls in when the data section is cut
    into ``count`` equal spans. The ranges are disjoint, cover every tensor, and depend only on the
    header."""
    total = max((e.end for e in entries), default=0)

    def range_holding(e: TensorEntry) -> int:
        # an empty tensor at the very end has its middle at ``total``: it joins the last range
        return min(count - 1, (e.begin + e.end) // 2 * count // total) if total else 0

    return [e for e in entries if range_holding(e) == index]


def plan_parts(session: Session, version: Version, job: Job, part_bytes: int) -> tuple[list[Job], list[int]]:
    """The part jobs of ``version`` (none when its staged weight files make fewer than two parts) and
    the ids of those created now, largest first (to send once committed, in that order). Parts planned
    by an earlier run are kept as they are."""
    files = staged_weight_files(session, version)
    jobs = JobRepository(session)
    planned = jobs.all_for(PART_KIND, [f.id for f in files])
    if planned:
        return planned, []
    counts = {f.id: part_count(f, part_bytes) for f in files}
    if sum(counts.values()) < 2:
        return [], []
    parts, sizes = [], {}
    for f in files:
        for i in range(counts[f.id]):
            part = jobs.add(PART_KIND, range_target(f"{job.target}:{f.path}", i, counts[f.id]), f.id)
            parts.append(part)
            sizes[part.id] = f.size // counts[f.id]
    return parts, largest_first(sizes)


def largest_first(sizes: dict[int, int]) -> list[int]:
    """Part job ids in the order they are sent: largest (in bytes) first, then by id. The broker hands
    messages out in that order, so the small parts come last and fill the gaps at the end instead of a
    big part starting when the other workers are nearly done (the tail where one worker works alone)."""
    return sorted(sizes, key=lambda job_id: (-sizes[job_id], job_id))


def encoded_files(parts: Sequence[Job]) -> set[int]:
    """Ids of the files every part of which has succeeded: their tensors are committed and their header
    stored, so the version's finishing run need not walk them again."""
    files = {p.target_id for p in parts}
    return {f for f in files if all(p.status == "succeeded" for p in parts if p.target_id == f)}


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
