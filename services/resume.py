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

import hashlib
from collections.abc import Sequence

from deltazoo.registry.errors import Conflict
from deltazoo.registry.models import File, Model, Version
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import FileRepository, VersionRepository
from deltazoo.services.access import Principal
from deltazoo.services.profiles import check_profile
from deltazoo.services.versions import DeclaredFile, record_upload, resolve_base
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
                    # a file named by its upload is needed again: what it was proved to be is not what the
                    # client holds now until it says so, by sending it or by naming the same sha256
                    # (``confirm_held``; its staged bytes are kept for that)
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


def held_complete(file: File, received: int) -> bool:
    """Whether the server holds a finished upload of ``file`` that a resumed push has not claimed yet
    (``confirm_held`` takes it for the sha256 of its bytes)."""
    return file.staging_key is not None and not file.uploaded and received == 0


def confirm_held(session: Session, store: ObjectStore, file: File, sha256: str) -> File:
    """A resumed push says it holds ``sha256``: when the bytes of ``file``'s finished upload hash to
    it (read again here: the client sent no bytes, so nothing is taken on its word), they are the
    file's upload, and the client need not send them again; else 409 ``held_bytes_differ``."""
    if file.staging_key is None or file.uploaded:
        raise Conflict(f"{file.path}: no finished upload of it is held; send the file", code="nothing_held")
    digest, size = hashlib.sha256(), 0
    for chunk in store.iter_chunks(file.staging_key):
        digest.update(chunk)
        size += len(chunk)
    if size != file.size or digest.hexdigest() != sha256:
        raise Conflict(
            f"{file.path}: the bytes held from the earlier push are not these (sha256 {sha256}); send the"
            " file",
            code="held_bytes_differ",
        )
    return record_upload(session, store, file, file.staging_key, sha256)

