"""What the web pages show of a model and of a version, gathered in one call each (the routes only
render): the same service functions as the JSON API, and the same privacy rule (``refs.get_readable_model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deltazoo.registry.objectstore import ObjectStore
from deltazoo.services import views
from deltazoo.services.access import Principal
from deltazoo.services.cards import card_bytes
from deltazoo.services.family import family_graph
from deltazoo.services.leaderboard import version_quality
from deltazoo.services.lineage import lineage_page
from deltazoo.services.refs import find_version, get_readable_model
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class ModelPage:
    detail: dict[str, Any]  # views.model_detail, as plain data for the templates
    lineage: dict[str, Any]  # the lineage page's body (``Lineage`` of docs/REST.md), likewise
    graph: dict[str, Any]  # family.family_graph
    quality: dict[str, list[dict[str, Any]]]  # ref -> its dense evaluations
    card: bytes | None  # the newest ready version's README.md, at most ``max_card_bytes``
    latest: int | None  # the newest ready revision


def model_page(
    session: Session,
    store: ObjectStore,
    viewer: Principal,
    org: str,
    name: str,
    *,
    lineage_limit: int,
    max_card_bytes: int,
) -> ModelPage:
    full_name = f"{org}/{name}"
    model = get_readable_model(session, viewer, org, name)
    detail = views.model_detail(session, model, full_name, viewer).model_dump()
    page = lineage_page(session, model, full_name, viewer, lineage_limit)
    lineage = page.body.model_dump()
    graph = family_graph(session, model, full_name, lineage, page.version_ids, viewer)
    quality = version_quality(session, list(page.version_ids.values()))
    ready = [v for v in detail["versions"] if v["status"] == "ready"]
    card = None
    if ready and ready[-1]["ref"] in page.version_ids:
        ref = ready[-1]["ref"]
        card = card_bytes(session, store, page.version_ids[ref], ref, max_card_bytes)
    return ModelPage(
        detail=detail,
        lineage=lineage,
        graph=graph,
        quality={ref: quality[vid] for ref, vid in page.version_ids.items()},
        card=card,
        latest=ready[-1]["revision"] if ready else None,
    )


def version_page(
    session: Session, viewer: Principal, org: str, name: str, rev: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A version's detail and its dense evaluations."""
    model = get_readable_model(session, viewer, org, name)
    version = find_version(session, model, f"{org}/{name}", rev)
    detail = views.version_detail(session, version, viewer).model_dump()
    return detail, version_quality(session, [version.id])[version.id]
