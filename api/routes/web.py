"""Server-rendered pages: models, a model's lineage and versions, a version, the leaderboard.

Every number comes from the same service functions as the JSON API (``services.views``,
``services.leaderboard``); templates only format them. Jinja2 autoescapes every value.
With auth on, private models are not shown here (the pages carry no token: the viewer is anonymous), by
the same rule as the JSON API (``services.access``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltazoo.api.auth import Viewer
from deltazoo.api.deps import DB, Store
from deltazoo.api.lineage_graph import layout
from deltazoo.api.model_card import MAX_CARD_BYTES, render_card
from deltazoo.api.plots import gain_plot, stored_share_plot
from deltazoo.registry.errors import DeltazooError, NotFound
from deltazoo.services import views
from deltazoo.services.catalog import search_models
from deltazoo.services.evaluation import list_texts, text_info
from deltazoo.services.leaderboard import leaderboard
from deltazoo.services.model_page import model_page, version_page
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from deltazoo import units

HERE = Path(__file__).resolve().parent.parent
STATIC = HERE / "static"
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(HERE / "templates"))
WEB_LINEAGE_PAGE = 100  # descendants drawn in a model's tree; the counts cover them all
WEB_VERSIONS_SHOWN = 100  # rows of a model's version table, newest; the model API lists every one
LEADERBOARD_PAGE = 100  # rows of the leaderboard page; links page through the rest


def human_bytes(n: int | float | None) -> str:
    """Sizes on the pages: two decimals (the tables compare versions of similar size)."""
    return units.human_bytes(n, digits=2, none="–")


templates.env.filters["human_bytes"] = human_bytes


def _page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context, status_code=status)


def _error(request: Request, exc: DeltazooError) -> HTMLResponse:
    context = {"status": exc.status, "code": exc.code, "message": exc.message}
    return _page(request, "error.html", context, exc.status)


@router.get("/static/{filename}")
def static(filename: str) -> FileResponse:
    path = STATIC / filename
    if "/" in filename or not path.is_file():
        raise NotFound(f"no static file {filename!r}")
    return FileResponse(path)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: DB, viewer: Viewer, q: str = "") -> HTMLResponse:
    return _page(
        request,
        "index.html",
        {
            "q": q,
            "models": [m.model_dump() for m in search_models(session, viewer, q, 500, 0).items],
            "stats": views.stats(session, viewer).model_dump(),
            "texts": [text_info(t) for t in list_texts(session)],
        },
    )


@router.get("/models/{org}/{name}", response_class=HTMLResponse)
def model_page_route(
    request: Request, org: str, name: str, session: DB, store: Store, viewer: Viewer
) -> HTMLResponse:
    try:
        page = model_page(
            session, store, viewer, org, name, lineage_limit=WEB_LINEAGE_PAGE, max_card_bytes=MAX_CARD_BYTES
        )
    except DeltazooError as exc:
        return _error(request, exc)
    lineage = page.lineage
    versions = page.detail["versions"]
    shown = versions[-WEB_VERSIONS_SHOWN:]  # the newest: a model of thousands of epochs is a page, not MBs
    return _page(
        request,
        "model.html",
        {
            "model": page.detail,
            "versions": shown,
            "older": len(versions) - len(shown),
            "graph": layout(page.graph),
            "counts": lineage["descendant_counts"],
            "total": lineage["descendants_total"],
            "not_shown": lineage["descendants_total"] - len(lineage["descendants"]),
            "quality": page.quality,
            "plot": stored_share_plot(shown),
            "card": render_card(page.card) if page.card is not None else None,
            "latest": page.latest,
            "server": str(request.base_url).rstrip("/"),
        },
    )


@router.get("/models/{org}/{name}/{rev}", response_class=HTMLResponse)
def version_page_route(
    request: Request, org: str, name: str, rev: str, session: DB, viewer: Viewer
) -> HTMLResponse:
    try:
        detail, quality = version_page(session, viewer, org, name, rev)
    except DeltazooError as exc:
        return _error(request, exc)
    return _page(request, "version.html", {"v": detail, "quality": quality})


@router.get("/leaderboard", response_class=HTMLResponse)
def leaderboard_page(
    request: Request, session: DB, viewer: Viewer, text: str = "", offset: int = Query(0, ge=0, le=2**63 - 1)
) -> HTMLResponse:
    texts = [text_info(t) for t in list_texts(session)]
    if not text and texts:
        text = texts[0]["name"]
    board = None
    if text:
        try:
            board = leaderboard(session, text, viewer, LEADERBOARD_PAGE, offset)
        except DeltazooError as exc:
            return _error(request, exc)
    plot = gain_plot(board["items"]) if board else None
    context = {"texts": texts, "board": board, "plot": plot, "page": LEADERBOARD_PAGE}
    return _page(request, "leaderboard.html", context)
