"""Resuming a push across commands: a pending version declaring the same files is continued.

A push that died (the API restarted, the network went away, the command was interrupted) leaves its
version ``pending`` with some files uploaded and, for files sent in parts, a part file on the API's
disk. Pushing the same folder again with ``resume`` finds that version instead of creating another:
the newest pending version of the model with the same base, relation, profiles, retention and exactly
the same declared files (path, size, sha256). The client then sends only the files still missing,
each from the server's ``received`` offset. Pending versions expire ``DELTAZOO_STAGING_EXPIRY_HOURS``
after they were created (services/staging.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from deltazoo.registry.models import Model, Version
from deltazoo.registry.repositories import FileRepository, VersionRepository
from deltazoo.services.access import Principal
from deltazoo.services.profiles import check_profile
from deltazoo.services.versions import DeclaredFile, resolve_base
from sqlalchemy.orm import Session


def find_resumable(
    session: Session,
    model: Model,
    base: str | None,
    relation: str,
    profiles: Sequence[str],
    files: Sequence[DeclaredFile],
    lossy: bool,
    *,
    viewer: Principal,
) -> tuple[Version, list[tuple[str, bool]]] | None:
    """The pending version this push left unfinished, with per file whether bytes are still needed."""
    auto = base == "auto"
    parent = resolve_base(session, base, viewer) if base and not auto else None
    wanted_profiles = list(dict.fromkeys(check_profile(p) for p in profiles))
    wanted_relation = relation if parent is not None or auto else "finetune"
    declared = {(f.path, f.size, f.sha256) for f in files}
    file_repo = FileRepository(session)
    for version in VersionRepository(session).pending_for_model(model.id):
        if (
            version.parent_version_id != (parent.id if parent else None)
            or version.relation != wanted_relation
            or list(version.profiles or []) != wanted_profiles
            or version.lossy != lossy
            or bool((version.sketch or {}).get("auto_base")) != auto
        ):
            continue
        held = file_repo.for_version(version.id)
        if {(f.path, f.size, f.sha256) for f in held} == declared:
            return version, [(f.path, not f.uploaded) for f in held]
    return None
