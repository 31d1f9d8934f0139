"""Server-rendered pages: models, a model's lineage and versions, a version, the leaderboard.

Every number comes from the same service functions as the JSON API (``registry.services.views``,
``registry.services.leaderboard``); templates only format them. Jinja2 autoescapes every value.
With auth on, private models are not shown here (the pages carry no token).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from api.auth import current_principal
from api.deps import DB
from deltazoo import units
from registry.errors import DeltazooError, NotFound
from registry.repositories import ModelRepository
from registry.services import views
from registry.services.evaluation import list_texts, text_info
from registry.services.leaderboard import leaderboard, version_quality
from registry.services.lineage import lineage_page
from registry.services.refs import get_model, get_version

HERE = Path(__file__).resolve().parent.parent
STATIC = HERE / "static"
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(HERE / "templates"))
WEB_LINEAGE_PAGE = 100  # descendants drawn in a model's tree; the counts cover them all


def human_bytes(n: int | float | None) -> str:
    """Sizes on the pages: two decimals (the tables compare versions of similar size)."""
    return units.human_bytes(n, digits=2, none="–")


templates.env.filters["human_bytes"] = human_bytes


def _page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context, status_code=status)


def _error(request: Request, exc: DeltazooError) -> HTMLResponse:
    context = {"status": exc.status, "code": exc.code, "message": exc.message}
    return _page(request, "error.html", context, exc.status)


def _hidden(request: Request, private: bool) -> bool:
    return private and bool(request.app.state.settings.auth)


@router.get("/static/{filename}")
def static(filename: str) -> FileResponse:
    path = STATIC / filename
    if "/" in filename or not path.is_file():
        raise NotFound(f"no static file {filename!r}")
    return FileResponse(path)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: DB, q: str = "") -> HTMLResponse:
    rows, _total = ModelRepository(session).search(q, 500, 0)
    rows = [(m, full) for m, full in rows if not _hidden(request, m.private)]
    return _page(
        request,
        "index.html",
        {
            "q": q,
            "models": views.model_summaries(session, rows),
            "stats": views.stats(session),
            "texts": [text_info(t) for t in list_texts(session)],
        },
    )


@router.get("/models/{org}/{name}", response_class=HTMLResponse)
def model_page(request: Request, org: str, name: str, session: DB) -> HTMLResponse:
    try:
        model = get_model(session, org, name)
        if _hidden(request, model.private):
            raise NotFound(f"model {org}/{name} does not exist", code="model_not_found")
        detail = views.model_detail(session, model, f"{org}/{name}")
        page = lineage_page(session, model, f"{org}/{name}", current_principal(request), WEB_LINEAGE_PAGE)
    except DeltazooError as exc:
        return _error(request, exc)
    lineage = page.body
    nodes = {n["ref"]: n for n in lineage["nodes"]}
    children: dict[str, list[str]] = {}
    for edge in lineage["edges"]:
        if edge["parent"] in nodes:
            children.setdefault(edge["parent"], []).append(edge["child"])
    roots = [ref for ref, n in nodes.items() if n["parent"] not in nodes]
    quality = version_quality(session, list(page.version_ids.values()))
    return _page(
        request,
        "model.html",
        {
            "model": detail,
            "nodes": nodes,
            "children": children,
            "roots": roots,
            "counts": lineage["descendant_counts"],
            "total": lineage["descendants_total"],
            "not_shown": lineage["descendants_total"] - len(lineage["descendants"]),
            "quality": {ref: quality[vid] for ref, vid in page.version_ids.items()},
            "plot": stored_share_plot(detail["versions"]),
        },
    )


@router.get("/models/{org}/{name}/{rev}", response_class=HTMLResponse)
def version_page(request: Request, org: str, name: str, rev: str, session: DB) -> HTMLResponse:
    try:
        model, version = get_version(session, org, name, rev)
        if _hidden(request, model.private):
            raise NotFound(f"model {org}/{name} does not exist", code="model_not_found")
        detail = views.version_detail(session, version)
    except DeltazooError as exc:
        return _error(request, exc)
    quality = version_quality(session, [version.id])[version.id]
    return _page(request, "version.html", {"v": detail, "quality": quality})


@router.get("/leaderboard", response_class=HTMLResponse)
def leaderboard_page(request: Request, session: DB, text: str = "") -> HTMLResponse:
    texts = [text_info(t) for t in list_texts(session)]
    if not text and texts:
        text = texts[0]["name"]
    board = None
    if text:
        try:
            board = leaderboard(session, text)
        except DeltazooError as exc:
            return _error(request, exc)
    plot = gain_plot(board["items"]) if board else None
    return _page(request, "leaderboard.html", {"texts": texts, "board": board, "plot": plot})


# --- inline SVG plots (coordinates here, drawing in templates/_macros.html) ---------------------

W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 300, 64, 620, 20, 250


def _frame(title: str, xlabel: str, ylabel: str) -> dict[str, Any]:
    return {
        "title": title, "xlabel": xlabel, "ylabel": ylabel, "width": W, "height": H,
        "left": LEFT, "right": RIGHT, "top": TOP, "bottom": BOTTOM,
        "xticks": [], "yticks": [], "bars": [], "dots": [],
    }


def _y(fraction: float) -> float:
    return round(BOTTOM - fraction * (BOTTOM - TOP), 1)


def stored_share_plot(versions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Bars: stored / logical bytes of each ready version (lower is better)."""
    ready = [v for v in versions if v["status"] == "ready" and v["logical_bytes"]]
    if not ready:
        return None
    plot = _frame("stored bytes as a share of logical bytes, per version", "revision", "stored / logical")
    slot = (RIGHT - LEFT) / len(ready)
    width = min(60.0, slot * 0.7)
    for i, v in enumerate(ready):
        share = min(1.0, v["stored_bytes"] / v["logical_bytes"])
        x = LEFT + slot * i + (slot - width) / 2
        plot["bars"].append(
            {
                "x": round(x, 1), "y": _y(share), "w": round(width, 1), "h": round(_y(0) - _y(share), 1),
                "label": f"@{v['revision']}",
                "tip": f"{v['ref']}: {human_bytes(v['stored_bytes'])} of {human_bytes(v['logical_bytes'])}",
            }
        )
    plot["yticks"] = [{"y": _y(f), "label": f"{f:.0%}"} for f in (0, 0.25, 0.5, 0.75, 1.0)]
    return plot


def gain_plot(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Dots: stored bytes (log scale) against gain kept, per profile; dense fine-tunes sit at 100 %."""
    points = [
        (i, i["gain_kept"], "profile") for i in items if i["profile"] and i["gain_kept"] is not None
    ] + [(i, 1.0, "dense") for i in items if not i["profile"] and i["status"] == "ready"]
    points = [p for p in points if p[0]["stored_bytes"] > 0]
    if not any(kind == "profile" for _, _, kind in points):
        return None
    plot = _frame("stored bytes against gain kept", "stored bytes (log scale)", "gain kept")
    logs = [math.log10(p[0]["stored_bytes"]) for p in points]
    lo, hi = math.floor(min(logs)), math.ceil(max(logs))
    hi = hi if hi > lo else lo + 1
    gains = [g for _, g, _ in points]
    gmin, gmax = min(0.0, min(gains)), max(1.0, max(gains))

    def x_of(stored: int) -> float:
        return round(LEFT + (math.log10(stored) - lo) / (hi - lo) * (RIGHT - LEFT - 40), 1)

    for item, gain, kind in points:
        plot["dots"].append(
            {
                "x": x_of(item["stored_bytes"]), "y": _y((gain - gmin) / (gmax - gmin)), "kind": kind,
                "label": f"{item['ref']}" + (f" {item['profile']}" if item["profile"] else ""),
                "tip": f"{item['ref']} {item['profile'] or 'dense'}: {human_bytes(item['stored_bytes'])}, "
                f"gain kept {100 * gain:.1f} %",
            }
        )
    plot["xticks"] = [{"x": x_of(10**e), "label": human_bytes(10**e)} for e in range(lo, hi + 1)]
    plot["yticks"] = [
        {"y": _y((g - gmin) / (gmax - gmin)), "label": f"{g:.0%}"} for g in (gmin, (gmin + gmax) / 2, gmax)
    ]
    return plot
