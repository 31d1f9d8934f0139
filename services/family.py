"""The model page's lineage graph: a bounded neighbourhood of a model, not its whole family.

Built on one page of ``services.lineage`` (ancestors, this model's versions, a page of
descendants, with counts of the rest) plus the siblings the lineage does not hold: other models'
versions sharing a parent with one of this model's, a page of at most ``limit`` with their count.
Private models the viewer may not read are left out, as everywhere.
"""

from __future__ import annotations

from typing import Any

from deltazoo.registry.family_repository import FamilyRepository
from deltazoo.registry.models import Model
from deltazoo.services.access import Principal
from deltazoo.services.views import version_summaries
from sqlalchemy.orm import Session


def family_graph(
    session: Session,
    model: Model,
    full_name: str,
    lineage: dict[str, Any],
    version_ids: dict[str, int],
    viewer: Principal,
    limit: int = 12,
) -> dict[str, Any]:
    """``{"nodes": [summary + "role"], "edges": [...], "counts": {...}}`` from a lineage page;
    roles are ``ancestor``, ``own``, ``sibling``, ``child`` and ``descendant`` (further down)."""
    ancestors = set(lineage["ancestors"])
    nodes = {n["ref"]: dict(n) for n in lineage["nodes"]}
    own = [n for n in nodes.values() if n["name"] == full_name]
    own_refs = {n["ref"] for n in own}
    for n in nodes.values():
        n["role"] = (
            "own"
            if n["ref"] in own_refs
            else "ancestor"
            if n["ref"] in ancestors
            else "child"
            if n["parent"] in own_refs
            else "descendant"
        )
    parent_ids = sorted({version_ids[n["parent"]] for n in own if n["parent"] in version_ids})
    siblings, sibling_total = FamilyRepository(session).children_page(
        parent_ids, exclude_model_id=model.id, limit=limit, private_namespaces=viewer.private_namespaces()
    )
    edges = [dict(e) for e in lineage["edges"]]
    for s in [v.model_dump() for v in version_summaries(session, siblings)] if siblings else []:
        if s["ref"] not in nodes:
            nodes[s["ref"]] = {**s, "role": "sibling"}
            if s["parent"]:
                edges.append({"parent": s["parent"], "child": s["ref"], "relation": s["relation"]})
    return {
        "nodes": list(nodes.values()),
        "edges": [e for e in edges if e["parent"] in nodes and e["child"] in nodes],
        "counts": {"siblings": sibling_total, "siblings_shown": len(siblings)},
    }
