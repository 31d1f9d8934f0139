"""Reading a version's model card (its top-level ``README.md``) for the model page."""

from __future__ import annotations

from deltazoo.registry.family_repository import FamilyRepository
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import VersionRepository
from deltazoo.services.transfer import iter_file, plan_file
from sqlalchemy.orm import Session

CARD_PATHS = ("README.md", "readme.md", "Readme.md", "README.MD")


def card_bytes(session: Session, store: ObjectStore, version_id: int, ref: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of a ready version's README.md, or None when it has none."""
    file = FamilyRepository(session).first_file(version_id, CARD_PATHS)
    if file is None:
        return None
    version = VersionRepository(session).get(version_id)
    if version is None or version.status != "ready":
        return None
    plan = plan_file(session, store, version, file.path, ref)
    return b"".join(bytes(c) for c in iter_file(store, plan, 0, min(plan.size, limit)))
