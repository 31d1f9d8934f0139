"""Staging hygiene: versions created but never committed are removed after an expiry.

Their uploads sit in staging objects that no blob references; the sweep deletes the version rows
(and, after the database commit, the staging objects), and the part files of resumable uploads that
can no longer finish. It runs when the API starts and after every commit, so no beat or cron is needed.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from deltazoo.registry.models import utcnow
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import FileRepository, ModelRepository, VersionRepository
from deltazoo.services.refs import ref_string
from deltazoo.services.resumable import PartialUploads
from deltazoo.services.versions import delete_versions
from sqlalchemy.orm import Session

log = logging.getLogger("deltazoo.staging")


def sweep_stale_uploads(
    session: Session, store: ObjectStore, max_age: timedelta, partials: PartialUploads | None = None
) -> list[str]:
    """Delete pending versions created more than ``max_age`` ago, and the resumable parts (in
    ``partials``) of files no pending version declares; returns the deleted versions' refs."""
    stale = VersionRepository(session).pending_created_before(utcnow() - max_age)
    names = ModelRepository(session).full_names(v.model_id for v in stale)
    refs = []
    for version in stale:
        ref = ref_string(names[version.model_id], version.revision)
        delete_versions(session, store, [version], ref)
        refs.append(ref)
    if partials is not None:
        session.flush()
        parts = partials.sweep(*FileRepository(session).awaiting_bytes())
        if parts:
            log.info("removed %d abandoned resumable upload part(s)", len(parts))
    if refs:
        log.info("removed %d uncommitted version(s) older than %s: %s", len(refs), max_age, ", ".join(refs))
    return refs
