"""Evaluation text sets and bits-per-byte evaluations (seed 004) of versions and their lossy profiles.

One ``evaluate`` job per (version, text set) targets the version's dense evaluation row; it computes
what is still missing: the dense bpb, then the bpb of every ready profile (base + unpacked delta) with
its gain kept, evaluating the parent's dense model on the same text first when needed. Jobs are
enqueued after the commit, at most one queued job per row, so enqueueing again is harmless.

Evaluation ``status``: ``pending`` (a job will fill it), ``ready`` (``bits_per_byte`` set),
``not_evaluable`` (no config.json, or an architecture transformers cannot build: the message says
which), ``failed`` (an unexpected error, with its message).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from functools import partial
from typing import Any

from deltazoo.compression.other_files import decompress
from deltazoo.registry.db import after_commit
from deltazoo.registry.errors import BadRequest, Conflict, DeltazooError, NotFound
from deltazoo.registry.evaluation_repository import EvaluationRepository
from deltazoo.registry.models import Evaluation, File, Job, TextSet, Version
from deltazoo.registry.objectstore import ObjectStore, blob_key, delete_objects
from deltazoo.registry.repositories import (
    ArtifactRepository,
    BlobRepository,
    FileRepository,
    JobRepository,
    ModelRepository,
)
from deltazoo.services.refs import check_description, ref_string
from deltazoo.services.storage import put_blob, read_blob
from sqlalchemy import select
from sqlalchemy.orm import Session

from deltazoo.refs import NAME_PART

Enqueue = Callable[[int], None]
TEXT_NAME_RE = re.compile(rf"^{NAME_PART}\Z")  # the syntax of an ORG or NAME part
DONE = ("ready", "not_evaluable")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt")


class TooLarge(DeltazooError):
    status = 413
    code = "text_too_large"


# --- text sets ---------------------------------------------------------------------------------


def text_info(t: TextSet) -> dict[str, Any]:
    return {
        "name": t.name,
        "description": t.description,
        "bytes": t.bytes,
        "sha256": t.sha256,
        "created_at": t.created_at,
    }


def list_texts(session: Session) -> list[TextSet]:
    return list(session.scalars(select(TextSet).order_by(TextSet.name)))


def get_text(session: Session, name: str) -> TextSet:
    text = session.scalar(select(TextSet).where(TextSet.name == name))
    if text is None:
        known = ", ".join(t.name for t in list_texts(session)) or "none yet"
        raise NotFound(
            f"no evaluation text set {name!r}; known text sets: {known} (register one with POST /v1/texts)",
            code="text_not_found",
        )
    return text


def delete_text(session: Session, store: ObjectStore, name: str) -> None:
    """Forget text set ``name``: its evaluations go with it (its leaderboard too), the evaluations still
    queued for it are cancelled, and its bytes are deleted once nothing else references them."""
    text = get_text(session, name)
    evaluations = select(Evaluation.id).where(Evaluation.text_set_id == text.id)
    JobRepository(session).cancel_unfinished(
        (Job.kind == "evaluate") & Job.target_id.in_(evaluations), f"cancelled: text set {name!r} was deleted"
    )
    blob = text.blob
    session.delete(text)  # its evaluations by ON DELETE CASCADE
    session.flush()
    if blob is not None and BlobRepository(session).drop_reference(blob):
        after_commit(session, partial(delete_objects, store, [blob_key(blob)]))


def check_text(name: str, data: bytes, max_bytes: int) -> str:
    """Validate a text set's name and bytes; returns the decoded text."""
    if not TEXT_NAME_RE.match(name or ""):
        raise BadRequest(
            f"text set name {name!r} must be 1-100 letters, digits, '.', '_' or '-' (starting with a "
            "letter or digit)",
            code="invalid_text_name",
        )
    if len(data) > max_bytes:
        raise TooLarge(f"text set is larger than {max_bytes} bytes; upload a smaller held-out sample")
    if not data.strip():
        raise BadRequest("the text set is empty; upload UTF-8 text to evaluate on", code="empty_text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the text set is not UTF-8 (byte {exc.start} is invalid); re-encode it as UTF-8",
            code="invalid_text_encoding",
        ) from None


def register_text(
    session: Session,
    store: ObjectStore,
    name: str,
    data: bytes,
    description: str,
    max_bytes: int,
    max_versions: int,
    enqueue: Enqueue,
) -> TextSet:
    """Store a new text set and enqueue its evaluation of the newest ``max_versions`` ready versions."""
    check_text(name, data, max_bytes)
    check_description(description, "text set")
    if session.scalar(select(TextSet).where(TextSet.name == name)) is not None:
        raise Conflict(f"text set {name!r} already exists; pick another name", code="text_exists")
    blob, _new = put_blob(session, store, data)
    text = TextSet(name=name, description=description, sha256=blob, bytes=len(data), blob=blob)
    session.add(text)
    session.flush()
    versions = session.scalars(
        select(Version).where(Version.status == "ready").order_by(Version.id.desc()).limit(max_versions)
    ).all()
    for version in versions:
        ensure_evaluation(session, version, text, enqueue)
    return text


# --- enqueueing --------------------------------------------------------------------------------


def _work_left(session: Session, version: Version, text: TextSet, dense: Evaluation) -> bool:
    if dense.status not in DONE:
        return True
    if dense.status == "not_evaluable":
        return False
    for a in ArtifactRepository(session).for_version(version.id):
        row = EvaluationRepository(session).find(version.id, text.id, a.id)
        if a.status == "ready" and (row is None or row.status not in DONE):
            return True
    return False


def ensure_evaluation(
    session: Session, version: Version, text: TextSet, enqueue: Enqueue, retry: bool = False
) -> tuple[Evaluation, Job | None]:
    """The version's dense row on ``text``, and a job when work is left (None: nothing to do)."""
    dense = EvaluationRepository(session).dense(version, text)
    if retry and dense.status == "failed":
        dense.status, dense.status_message = "pending", None
    if dense.status == "failed" or not _work_left(session, version, text, dense):
        return dense, None
    jobs = JobRepository(session)
    job = jobs.latest_for("evaluate", dense.id)
    if job is None or job.status != "queued":
        name = ModelRepository(session).full_names([version.model_id])[version.model_id]
        job = jobs.add("evaluate", f"{ref_string(name, version.revision)}:text={text.name}", dense.id)
        job_id = job.id
        after_commit(session, lambda: enqueue(job_id))
    return dense, job


def enqueue_for_version(session: Session, version: Version, enqueue: Enqueue) -> None:
    """A version (or one of its profiles) became ready: evaluate it on every text set."""
    if version.status != "ready":
        return
    for text in list_texts(session):
        ensure_evaluation(session, version, text, enqueue)


def request_evaluation(
    session: Session, version: Version, ref: str, text_name: str, enqueue: Enqueue
) -> tuple[Evaluation, Job | None]:
    text = get_text(session, text_name)
    if version.status != "ready":
        raise Conflict(
            f"{ref} is {version.status}; it is evaluated once ready (automatically)", code="version_not_ready"
        )
    return ensure_evaluation(session, version, text, enqueue, retry=True)


def mark_evaluation_failed(session: Session, evaluation_id: int, message: str) -> None:
    row = session.get(Evaluation, evaluation_id)
    if row is not None and row.status not in DONE:
        row.status, row.status_message = "failed", message


# --- reading a version's files -----------------------------------------------------------------


def read_other_file(session: Session, store: ObjectStore, file: File) -> bytes:
    """A non-tensor file's bytes (its blob holds them in ``compression.other_files`` form)."""
    if file.blob is None:
        raise NotFound(f"{file.path} has no stored bytes yet")
    return decompress(read_blob(store, file.blob), file.size)


def version_config(session: Session, store: ObjectStore, version: Version) -> dict[str, Any] | None:
    for f in FileRepository(session).for_version(version.id):
        if f.path == "config.json":
            try:
                value = json.loads(read_other_file(session, store, f))
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None
            return value if isinstance(value, dict) else None
    return None


def load_tokenizer(session: Session, store: ObjectStore, version: Version) -> Any | None:
    """The version's own tokenizer when it ships one (None: byte-level evaluation)."""
    files = [f for f in FileRepository(session).for_version(version.id) if f.kind == "other"]
    if not any(os.path.basename(f.path) in TOKENIZER_FILES for f in files):
        return None
    from deltazoo.compression.quality import NotEvaluable
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            if "/" in f.path:
                continue
            with open(os.path.join(tmp, f.path), "wb") as out:
                out.write(read_other_file(session, store, f))
        try:
            return AutoTokenizer.from_pretrained(tmp, local_files_only=True)
        except Exception as exc:  # transformers raises many kinds for an unusable tokenizer
            raise NotEvaluable(f"the version's tokenizer cannot be loaded: {exc}") from exc


def evaluations_of_versions(session: Session, version_ids: list[int]) -> list[tuple[Evaluation, TextSet]]:
    if not version_ids:
        return []
    rows = session.execute(
        select(Evaluation, TextSet)
        .join(TextSet, TextSet.id == Evaluation.text_set_id)
        .where(Evaluation.version_id.in_(version_ids))
        .order_by(TextSet.name, Evaluation.id)
    ).all()
    return [(e, t) for e, t in rows]
