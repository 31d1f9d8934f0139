"""The model page's lineage graph: a bounded neighbourhood of a model, not its whole family.

Drawn: the model's newest versions, the ancestors of each (their chains to the root), siblings (other
models' versions sharing a parent with one of them) and children (versions derived from one of them),
each list capped at ``limit`` with the full count beside it, so a base with 10,000 fine-tunes draws a
page, not 10,000 boxes. Private models the viewer may not read are left out, as everywhere.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from registry.family_repository import FamilyRepository
from registry.models import Model, Version
from registry.repositories import ModelRepository
from registry.services.access import Principal, can_read_model
from registry.services.views import chain, version_summaries


def family_graph(session: Session, model: Model, viewer: Principal, limit: int = 12) -> dict[str, Any]:
    """``{"nodes": [summary + "role"], "edges": [{"parent", "child", "relation"}], "counts": {...}}``;
    roles are ``ancestor``, ``own``, ``sibling`` and ``child``."""
    family = FamilyRepository(session)
    own, own_total = family.newest_of_model(model.id, limit)
    roles: dict[int, str] = {v.id: "own" for v in own}
    nodes: dict[int, Version] = {v.id: v for v in own}
    for v in own:
        for a in chain(session, v)[1:]:
            if a.id not in nodes:
                nodes[a.id], roles[a.id] = a, "ancestor"
    private = viewer.private_namespaces()
    parent_ids = sorted({v.parent_version_id for v in own if v.parent_version_id is not None})
    siblings, sibling_total = family.children_page(
        parent_ids, exclude_model_id=model.id, limit=limit, private_namespaces=private
    )
    children, child_total = family.children_page(
        [v.id for v in own], exclude_model_id=model.id, limit=limit, private_namespaces=private
    )
    for role, rows in (("sibling", siblings), ("child", children)):
        for v in rows:
            if v.id not in nodes:
                nodes[v.id], roles[v.id] = v, role
    names = ModelRepository(session).full_names({v.model_id for v in nodes.values()})
    readable = {
        m.id
        for m in (session.get(Model, i) for i in {v.model_id for v in nodes.values()})
        if m is not None and can_read_model(viewer, m, names[m.id].split("/", 1)[0])
    }
    shown = [v for v in nodes.values() if v.model_id in readable]
    summaries = dict(zip([v.id for v in shown], version_summaries(session, shown), strict=True))
    out_nodes = [{**summaries[v.id], "role": roles[v.id]} for v in shown]
    edges = [
        {
            "parent": summaries[v.parent_version_id]["ref"],
            "child": summaries[v.id]["ref"],
            "relation": v.relation,
        }
        for v in shown
        if v.parent_version_id in summaries
    ]
    return {
        "nodes": out_nodes,
        "edges": edges,
        "counts": {
            "own": own_total,
            "own_shown": len(own),
            "siblings": sibling_total,
            "siblings_shown": sum(1 for v in siblings if v.model_id in readable),
            "children": child_total,
            "children_shown": sum(1 for v in children if v.model_id in readable),
        },
    }
