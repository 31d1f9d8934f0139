"""The list of models a caller may read, searched by name (the REST list and the web index)."""

from __future__ import annotations

from deltazoo.registry.errors import Unprocessable
from deltazoo.registry.model_listing import After, private_count
from deltazoo.registry.repositories import ModelRepository
from deltazoo.registry.tallies import TallyRepository
from deltazoo.services import views
from deltazoo.services.access import Principal
from sqlalchemy.orm import Session

from deltazoo.schemas import ModelList

MAX_CURSOR = 320  # an org (100) and a model name (200) with the slash, and some room


def parse_cursor(cursor: str | None) -> After | None:
    """The model a page starts after: a previous page's ``next_cursor`` (``org/name``)."""
    if not cursor:
        return None
    org, slash, name = cursor.partition("/")
    if not (org and slash and name) or len(cursor) > MAX_CURSOR:
        raise Unprocessable(
            f"cursor {cursor[:40]!r} is not one this server gave; pass the previous page's next_cursor"
            " unchanged, or no cursor for the first page",
            code="invalid_cursor",
        )
    return After(org, name)


def _listed_total(session: Session, viewer: Principal) -> int:
    """How many models the whole list holds for ``viewer``, from the counters (``registry.tallies``)."""
    totals = TallyRepository(session).totals()
    allowed = viewer.private_namespaces()
    if allowed is None:
        return totals.get("models", 0)
    public = totals.get("models", 0) - totals.get("private_models", 0)
    return public + (private_count(session, allowed) if allowed else 0)


def search_models(
    session: Session, viewer: Principal, search: str, limit: int, offset: int, cursor: str | None = None
) -> ModelList:
    """The readable models whose name contains ``search``: one page (after ``cursor``, then skipping
    ``offset``), the cursor of the next one, and how many match in all (the whole list's number: the
    counters)."""
    after = parse_cursor(cursor)
    allowed = viewer.private_namespaces()
    known = None if search else _listed_total(session, viewer)
    rows, total = ModelRepository(session).search(
        search, limit + 1, offset, allowed, known_total=known, after=after
    )
    more = len(rows) > limit
    page = rows[:limit]
    return ModelList(
        items=tuple(views.model_summaries(session, page)),
        total=total,
        next_cursor=page[-1][1] if more and page else None,
    )
