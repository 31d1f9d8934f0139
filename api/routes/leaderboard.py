"""``GET /v1/leaderboard?text=NAME[&limit=N][&offset=K|&cursor=C]``: a page ranked by 8 / bpb."""

from __future__ import annotations

from deltazoo.api.auth import Viewer
from deltazoo.api.deps import DB
from deltazoo.registry.errors import BadRequest
from deltazoo.services.leaderboard import DEFAULT_PAGE, leaderboard
from fastapi import APIRouter, Query

router = APIRouter(tags=["evaluation"])


@router.get("/leaderboard")
def get_leaderboard(
    session: DB,
    viewer: Viewer,
    text: str = "",
    limit: int = DEFAULT_PAGE,  # bounds checked by the service: 422 invalid_limit / invalid_offset
    offset: int = 0,
    cursor: str | None = Query(None, max_length=60),
) -> dict:
    if not text:
        raise BadRequest("name the evaluation text set: GET /v1/leaderboard?text=NAME", code="no_text")
    return leaderboard(session, text, viewer, limit, offset, cursor)
