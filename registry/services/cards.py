"""Reading a version's model card (its top-level ``README.md``) for the model page."""

from __future__ import annotations

from sqlalchemy.orm import Session

from registry.models import Version
from registry.objectstore import ObjectStore
from registry.repositories import FileRepository
from registry.services.transfer import iter_file, plan_file

CARD_PATHS = ("README.md", "readme.md", "Readme.md", "README.MD")


def card_bytes(session: Session, store: ObjectStore, version: Version, ref: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of the version's README.md, or None when it has none (or is not ready)."""
    if version.status != "ready":
        return None
    for path in CARD_PATHS:
        if FileRepository(session).get(version.id, path) is not None:
            plan = plan_file(session, store, version, path, ref)
            return b"".join(bytes(c) for c in iter_file(store, plan, 0, min(plan.size, limit)))
    return None
