"""The list of models a caller may read, searched by name (the REST list and the web index)."""

from __future__ import annotations

from deltazoo.registry.repositories import ModelRepository
from deltazoo.registry.tallies import TallyRepository
from deltazoo.services import views
from deltazoo.services.access import Principal
from sqlalchemy.orm import Session

from deltazoo.schemas import ModelList


def search_models(
    session: Session, viewer: Principal, search: str, limit: int, offset: int
) -> ModelList:
    """The readable models whose name contains ``search`` (one page) and how many there are (the whole
    zoo's list: the ``models`` counter, ``registry.tallies``)."""
    allowed = viewer.private_namespaces()
    known = TallyRepository(session).totals().get("models", 0) if not search and allowed is None else None
    rows, total = ModelRepository(session).search(search, limit, offset, allowed, known_total=known)
    return ModelList(items=tuple(views.model_summaries(session, rows)), total=total)
