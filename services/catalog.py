"""The list of models a caller may read, searched by name (the REST list and the web index)."""

from __future__ import annotations

from typing import Any

from deltazoo.registry.repositories import ModelRepository
from deltazoo.services import views
from deltazoo.services.access import Principal
from sqlalchemy.orm import Session


def search_models(
    session: Session, viewer: Principal, search: str, limit: int, offset: int
) -> dict[str, Any]:
    """``{"items": [model summary], "total": n}``: the readable models whose name contains ``search``."""
    rows, total = ModelRepository(session).search(search, limit, offset, viewer.private_namespaces())
    return {"items": views.model_summaries(session, rows), "total": total}
