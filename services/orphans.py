"""Object-store hygiene: compare the database with the object store, report and repair the difference.

What can be left behind when a part fails mid-way:

- incomplete writes: S3 multipart uploads the store went away in the middle of (the client's own abort
  failed too), or temporary files of the local store;
- staging objects no file row points at (an upload staged, then its row rolled back or deleted while
  the store did not answer);
- blob objects with no blob row (an encode that stored bytes and then failed, or a delete whose object
  removal failed).

Each is removed only once it is older than the grace period, so writes in flight (an object is stored
before the row naming it is committed) are never touched; just before deleting, the row is looked up
again and the object's age read again. What cannot be repaired is reported: blob rows whose object is
missing, and staging keys whose object is missing (their versions cannot be encoded: delete them).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from deltazoo.registry.models import utcnow
from deltazoo.registry.objectstore import ObjectStore, StoredObject, blob_key
from deltazoo.registry.repositories import BlobRepository, FileRepository
from sqlalchemy.orm import Session

log = logging.getLogger("deltazoo.orphans")
_BATCH = 500


@dataclass
class Audit:
    incomplete_uploads: list[str] = field(default_factory=list)
    orphan_staging: list[str] = field(default_factory=list)
    orphan_blobs: list[str] = field(default_factory=list)
    missing_blobs: list[str] = field(default_factory=list)  # rows whose object is gone (not repairable)
    missing_staging: list[str] = field(default_factory=list)
    repaired: bool = False

    def clean(self) -> bool:
        return not (
            self.incomplete_uploads
            or self.orphan_staging
            or self.orphan_blobs
            or self.missing_blobs
            or self.missing_staging
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def audit_store(session: Session, store: ObjectStore, grace: timedelta, *, repair: bool) -> Audit:
    """Compare the rows with the objects; with ``repair``, abort and delete what is older than ``grace``
    and named by no row."""
    cutoff = utcnow() - grace
    report = Audit(repaired=repair)
    for upload in store.incomplete_uploads():
        if upload.initiated < cutoff:
            report.incomplete_uploads.append(upload.key)
            if repair:
                store.abort_upload(upload)
    _staging(session, store, cutoff, report, repair)
    _blobs(session, store, cutoff, report, repair)
    if not report.clean():
        log.warning(
            "object store audit%s: %d incomplete upload(s), %d orphan staging object(s), %d orphan blob(s), "
            "%d blob row(s) without object, %d staging key(s) without object",
            " (repaired)" if repair else "",
            len(report.incomplete_uploads),
            len(report.orphan_staging),
            len(report.orphan_blobs),
            len(report.missing_blobs),
            len(report.missing_staging),
        )
    return report


def _old(store: ObjectStore, obj: StoredObject, cutoff: datetime) -> bool:
    """Still older than the cutoff when looked at again (it may have been written again since)."""
    fresh = next((o for o in store.list_objects(obj.key) if o.key == obj.key), None)
    return fresh is not None and fresh.modified < cutoff


def _staging(session: Session, store: ObjectStore, cutoff: datetime, report: Audit, repair: bool) -> None:
    files = FileRepository(session)
    referenced = set(files.staging_keys())
    listed: set[str] = set()
    for obj in store.list_objects("staging/"):
        listed.add(obj.key)
        if obj.key in referenced or obj.modified >= cutoff:
            continue
        if repair:
            if files.referenced_staging_keys([obj.key]) or not _old(store, obj, cutoff):
                continue
            store.delete(obj.key)
        report.orphan_staging.append(obj.key)
    report.missing_staging = sorted(k for k in referenced - listed if not store.exists(k))


def _blobs(session: Session, store: ObjectStore, cutoff: datetime, report: Audit, repair: bool) -> None:
    blobs = BlobRepository(session)
    listed: set[str] = set()
    candidates: list[StoredObject] = []

    def settle(batch: list[StoredObject]) -> None:
        rows = blobs.existing([_sha(o.key) for o in batch])
        for obj in batch:
            if _sha(obj.key) in rows:
                continue
            if repair:
                if blobs.existing([_sha(obj.key)]) or not _old(store, obj, cutoff):
                    continue
                store.delete(obj.key)
            report.orphan_blobs.append(obj.key)

    for obj in store.list_objects("blobs/"):
        listed.add(_sha(obj.key))
        if obj.modified < cutoff:
            candidates.append(obj)
        if len(candidates) >= _BATCH:
            settle(candidates)
            candidates = []
    settle(candidates)
    for sha in blobs.all_shas():
        if sha not in listed and not store.exists(blob_key(sha)):  # written after the listing: fine
            report.missing_blobs.append(blob_key(sha))


def _sha(key: str) -> str:
    return key.rsplit("/", 1)[-1]
