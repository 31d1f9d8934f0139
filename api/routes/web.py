"""Server-rendered pages: models, a model's lineage and versions, a version, the leaderboard.

Every number comes from the same service functions as the JSON API (``services.views``,
``services.leaderboard``); templates only format them. Jinja2 autoescapes every value.
With auth on, private models are not shown here (the pages carry no token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltazoo.api.auth import current_principal
from deltazoo.api.deps import DB, Store
from deltazoo.api.lineage_graph import layout
from deltazoo.api.model_card import MAX_CARD_BYTES, render_card
from deltazoo.api.plots import gain_plot, stored_share_plot
from deltazoo.registry.errors import DeltazooError, NotFound
from deltazoo.registry.repositories import ModelRepository
from deltazoo.services import views
from deltazoo.services.cards import card_bytes
from deltazoo.services.evaluation import list_texts, text_info
from deltazoo.services.family import family_graph
from deltazoo.services.leaderboard import leaderboard, version_quality
from deltazoo.services.lineage import lineage_page
from deltazoo.services.refs import get_model, get_version
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from deltazoo import units

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
            "stats": views.stats(session, current_principal(request)),
            "texts": [text_info(t) for t in list_texts(session)],
        },
    )


@router.get("/models/{org}/{name}", response_class=HTMLResponse)
def model_page(request: Request, org: str, name: str, session: DB, store: Store) -> HTMLResponse:
    try:
        model = get_model(session, org, name)
        if _hidden(request, model.private):
            raise NotFound(f"model {org}/{name} does not exist", code="model_not_found")
        detail = views.model_detail(session, model, f"{org}/{name}", current_principal(request))
        page = lineage_page(session, model, f"{org}/{name}", current_principal(request), WEB_LINEAGE_PAGE)
        lineage = page.body
        graph = family_graph(
            session, model, f"{org}/{name}", lineage, page.version_ids, current_principal(request)
        )
    except DeltazooError as exc:
        return _error(request, exc)
    quality = version_quality(session, list(page.version_ids.values()))
    ready = [v for v in detail["versions"] if v["status"] == "ready"]
    latest = ready[-1]["revision"] if ready else None
    card = None
    if ready and ready[-1]["ref"] in page.version_ids:
        ref = ready[-1]["ref"]
        data = card_bytes(session, store, page.version_ids[ref], ref, MAX_CARD_BYTES)
        card = render_card(data) if data is not None else None
    return _page(
        request,
        "model.html",
        {
            "model": detail,
            "graph": layout(graph),
            "counts": lineage["descendant_counts"],
            "total": lineage["descendants_total"],
            "not_shown": lineage["descendants_total"] - len(lineage["descendants"]),
            "quality": {ref: quality[vid] for ref, vid in page.version_ids.items()},
            "plot": stored_share_plot(detail["versions"]),
            "card": card,
            "latest": latest,
            "server": str(request.base_url).rstrip("/"),
        },
    )


@router.get("/models/{org}/{name}/{rev}", response_class=HTMLResponse)
def version_page(request: Request, org: str, name: str, rev: str, session: DB) -> HTMLResponse:
    try:
        model, version = get_version(session, org, name, rev)
        if _hidden(request, model.private):
            raise NotFound(f"model {org}/{name} does not exist", code="model_not_found")
        detail = views.version_detail(session, version, current_principal(request))
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
            board = leaderboard(session, text, current_principal(request))
        except DeltazooError as exc:
            return _error(request, exc)
    plot = gain_plot(board["items"]) if board else None
    return _page(request, "leaderboard.html", {"texts": texts, "board": board, "plot": plot})
