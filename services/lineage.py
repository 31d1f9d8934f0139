"""A model's lineage, costing what it shows: its versions, their ancestors, the number of descendants
by relation and one page of descendants (by id, with a cursor), whatever the size of the family."""

from __future__ import annotations

from dataclasses import dataclass

from deltazoo.registry.errors import Unprocessable
from deltazoo.registry.lineage_repository import LineageRepository
from deltazoo.registry.models import Model, Version
from deltazoo.registry.repositories import VersionRepository
from deltazoo.services.access import OPEN, Principal
from deltazoo.services.views import version_summaries
from sqlalchemy.orm import Session

from deltazoo.schemas import Edge, Lineage

DEFAULT_PAGE = 100
MAX_PAGE = 1000


@dataclass(frozen=True)
class LineagePage:
    body: Lineage  # the answer of docs/REST.md
    version_ids: dict[str, int]  # ref -> version id, for every node of the page


def parse_cursor(cursor: str | None) -> int:
    """The id after which the page starts (0: the first page)."""
    if cursor is None or cursor == "":
        return 0
    if not cursor.isdigit() or len(cursor) > 18:
        raise Unprocessable(
            f"cursor {cursor[:40]!r} is not one this server gave; pass the previous page's next_cursor"
            " unchanged, or no cursor for the first page",
            code="invalid_cursor",
        )
    return int(cursor)


def _ancestors_nearest_first(own: list[Version], found: dict[int, Version]) -> list[Version]:
    by_id = {**found, **{v.id: v for v in own}}
    out: list[Version] = []
    seen = {v.id for v in own}
    for v in own:
        walked: set[int] = set()
        parent_id = v.parent_version_id
        while parent_id is not None and parent_id in by_id and parent_id not in walked:
            walked.add(parent_id)
            if parent_id not in seen:
                seen.add(parent_id)
                out.append(by_id[parent_id])
            parent_id = by_id[parent_id].parent_version_id
    return out


def lineage_page(
    session: Session,
    model: Model,
    full_name: str,
    viewer: Principal = OPEN,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
) -> LineagePage:
    """Every version of ``model``, all their ancestors, the count of their descendants (versions of other
    models, any depth) by relation, and the descendants with id after ``cursor``, at most ``limit``.
    A node's parent may sit on another page (its edge names it all the same).
    Versions of private models the ``viewer`` may not read are left out, counted nowhere and named
    nowhere, as if they did not exist."""
    if not 1 <= limit <= MAX_PAGE:
        raise Unprocessable(f"limit must be between 1 and {MAX_PAGE} (got {limit})", code="invalid_limit")
    after = parse_cursor(cursor)
    versions, lineage = VersionRepository(session), LineageRepository(session)
    allowed = viewer.private_namespaces()
    own = versions.for_model(model.id)
    own_ids = [v.id for v in own]
    ancestors = _ancestors_nearest_first(own, versions.get_many(lineage.ancestor_ids(own_ids)))
    counts, below = lineage.descendants(model.id, allowed, after, limit + 1)
    more = len(below) > limit
    page = below[:limit]

    nodes = [*own, *ancestors, *page]
    node_ids = {v.id for v in nodes}
    outside = versions.get_many(
        v.parent_version_id for v in page if v.parent_version_id and v.parent_version_id not in node_ids
    )
    readers = lineage.readers({v.model_id for v in [*nodes, *outside.values()]})
    hidden = {
        mid
        for mid, (private, org, _) in readers.items()
        if private and not (allowed is None or org in allowed)
    }
    nodes = [v for v in nodes if v.model_id not in hidden]
    visible = {v.id for v in nodes} | {i for i, v in outside.items() if v.model_id not in hidden}
    names = {mid: f"{org}/{name}" for mid, (_, org, name) in readers.items()}
    summaries = dict(
        zip(
            [v.id for v in nodes],
            version_summaries(session, nodes, viewer, known=[*nodes, *outside.values()], names=names),
            strict=True,
        )
    )
    for v in nodes:
        if v.parent_version_id is not None and v.parent_version_id not in visible:
            # a private parent the viewer may not see
            summaries[v.id] = summaries[v.id].model_copy(update={"parent": None})
    edges = [
        Edge(parent=parent, child=summaries[v.id].ref, relation=v.relation)
        for v in nodes
        if (parent := summaries[v.id].parent) is not None
    ]
    body = Lineage(
        model=full_name,
        nodes=tuple(summaries.values()),
        edges=tuple(edges),
        ancestors=tuple(summaries[a.id].ref for a in ancestors if a.id in summaries),
        descendants=tuple(summaries[v.id].ref for v in page if v.id in summaries),
        descendant_counts=dict(sorted(counts.items())),
        descendants_total=sum(counts.values()),
        next_cursor=str(page[-1].id) if more and page else None,
    )
    return LineagePage(body, {s.ref: vid for vid, s in summaries.items()})
