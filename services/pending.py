"""Pending versions (created, not committed): what each holds so far and when it expires."""

from __future__ import annotations

from datetime import timedelta

from deltazoo.registry.repositories import FileRepository, VersionRepository
from deltazoo.services.access import Principal
from deltazoo.services.resumable import PartialUploads
from deltazoo.services.views import version_summaries
from sqlalchemy.orm import Session

from deltazoo.schemas import PendingVersion


def pending_versions(
    session: Session, viewer: Principal, partials: PartialUploads, expiry: timedelta, limit: int
) -> list[PendingVersion]:
    """The pending versions the viewer may read, oldest first, with the bytes the server holds (whole
    files uploaded plus the received part of files sent in parts) and when the expiry removes them."""
    versions = VersionRepository(session).pending_readable(viewer.private_namespaces(), limit)
    files = FileRepository(session)
    out = []
    for summary, version in zip(version_summaries(session, versions), versions, strict=True):
        declared = files.for_version(version.id)
        held = sum(f.size if f.uploaded else partials.received(f) for f in declared)
        out.append(
            PendingVersion(
                **dict(summary),
                files=len(declared),
                files_uploaded=sum(1 for f in declared if f.uploaded),
                declared_bytes=sum(f.size for f in declared),
                held_bytes=held,
                expires_at=version.created_at + expiry,
            )
        )
    return out
