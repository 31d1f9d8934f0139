"""Layout of the model page's lineage graph (``services.family``): boxes in columns by
generation (a parent left of its children), edges from parent to child, each version's tags under its
name, "+N more" where a list was cut (the page counts the descendants it leaves out). Drawn as
inline SVG by ``templates/_macros.html``."""

from __future__ import annotations

from typing import Any

BOX_W, BOX_H, COL_GAP, ROW_GAP, PAD = 190, 40, 60, 12, 16
TAGS_CHARS = 28  # a longer list of tags is cut with an ellipsis (the tooltip holds them all)
ROLE_ORDER = {"ancestor": 0, "own": 1, "sibling": 2, "child": 3, "descendant": 4}


def layout(graph: dict[str, Any]) -> dict[str, Any] | None:
    nodes = {n["ref"]: n for n in graph["nodes"]}
    if not nodes:
        return None
    depth: dict[str, int] = {}

    def depth_of(ref: str, seen: frozenset[str] = frozenset()) -> int:
        if ref not in depth:
            parent = nodes[ref]["parent"]
            depth[ref] = depth_of(parent, seen | {ref}) + 1 if parent in nodes and parent not in seen else 0
        return depth[ref]

    columns: dict[int, list[dict[str, Any]]] = {}
    for ref in nodes:
        columns.setdefault(depth_of(ref), []).append(nodes[ref])
    boxes: dict[str, dict[str, Any]] = {}
    for col, members in sorted(columns.items()):
        members.sort(key=lambda n: (ROLE_ORDER[n["role"]], n["name"], n["revision"]))
        for row, n in enumerate(members):
            tags = list(n.get("tags") or [])
            shown = ", ".join(tags)
            boxes[n["ref"]] = {
                "ref": n["ref"],
                "role": n["role"],
                "status": n["status"],
                "parent": n["parent"] if n["parent"] in nodes else None,
                "x": PAD + col * (BOX_W + COL_GAP),
                "y": PAD + row * (BOX_H + ROW_GAP),
                "w": BOX_W,
                "h": BOX_H,
                "href": "/models/{}/{}".format(*n["ref"].split("@")),
                "label": n["ref"] if len(n["ref"]) <= 28 else n["ref"][:27] + "…",
                "tags": tags,
                "tags_label": shown if len(shown) <= TAGS_CHARS else shown[: TAGS_CHARS - 1] + "…",
                "tip": f"{n['ref']} ({n['role']}, {n['relation'] or 'root'}, {n['status']})"
                + (f" tags: {shown}" if tags else ""),
            }
    edges = []
    for e in graph["edges"]:
        a, b = boxes.get(e["parent"]), boxes.get(e["child"])
        if a and b:
            edges.append(
                {
                    "x1": a["x"] + BOX_W,
                    "y1": a["y"] + BOX_H / 2,
                    "x2": b["x"],
                    "y2": b["y"] + BOX_H / 2,
                    "relation": e["relation"],
                }
            )
    counts = graph["counts"]
    more = [
        f"{counts['siblings'] - counts['siblings_shown']} more siblings"
        for _ in (1,)
        if counts["siblings"] > counts["siblings_shown"]
    ]
    rows = max(len(m) for m in columns.values())
    return {
        "boxes": list(boxes.values()),
        "edges": edges,
        "width": PAD * 2 + len(columns) * (BOX_W + COL_GAP) - COL_GAP,
        "height": PAD * 2 + rows * (BOX_H + ROW_GAP) - ROW_GAP,
        "more": more,
        "counts": counts,
    }
