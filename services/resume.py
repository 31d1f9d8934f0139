"""Resuming a push across commands: a pending version declaring the same files is continued.

A push that died (the API restarted, the network went away, the command was interrupted) leaves its
version ``pending`` with some files uploaded and, for files sent in parts, a part file on the API's
disk. Pushing the same folder again with ``resume`` finds that version instead of creating another:
the newest pending version of the model with the same base, relation, profiles, retention and exactly
the same declared files (path, size, sha256; a file declared without sha256, named by its upload, matches
by path and size and is sent again unless its upload had not finished). The client then sends only the
files still missing, each from the server's ``received`` offset. Pending versions expire
``DELTAZOO_STAGING_EXPIRY_HOURS`` after they were created (services/staging.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from deltazoo.registry.models import File, Model, Version
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
    declared = {f.path: f for f in files}
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
        if len(held) == len(declared) and all(_same(declared.get(f.path), f) for f in held):
            for f in held:
                if declared[f.path].sha256 is None and f.sha256:
                    # a file named by its upload is sent again: what it was proved to be is not what the
                    # client holds now until its upload says so
                    f.sha256, f.uploaded = "", False
            return version, [(f.path, not f.uploaded) for f in held]
    return None


def _same(declared: DeclaredFile | None, held: File) -> bool:
    """``declared`` is ``held``: same size and sha256, or a sha256 that its upload will name."""
    return (
        declared is not None
        and declared.size == held.size
        and (declared.sha256 is None or declared.sha256 == held.sha256)
    )
