"""``GET /v1/leaderboard?text=NAME``: versions and profiles ranked by 8 / bpb."""

from __future__ import annotations

from fastapi import APIRouter

from api.auth import Viewer
from api.deps import DB
from registry.errors import BadRequest
from registry.services.leaderboard import leaderboard

router = APIRouter(tags=["evaluation"])


@router.get("/leaderboard")
def get_leaderboard(session: DB, viewer: Viewer, text: str = "") -> dict:
    if not text:
        raise BadRequest("name the evaluation text set: GET /v1/leaderboard?text=NAME", code="no_text")
    return leaderboard(session, text, viewer)
