"""``GET /v1/leaderboard?text=NAME``: versions and profiles ranked by 8 / bpb."""

from __future__ import annotations

from deltazoo.api.auth import Viewer
from deltazoo.api.deps import DB
from deltazoo.registry.errors import BadRequest
from deltazoo.services.leaderboard import leaderboard
from fastapi import APIRouter

router = APIRouter(tags=["evaluation"])


@router.get("/leaderboard")
def get_leaderboard(session: DB, viewer: Viewer, text: str = "") -> dict:
    if not text:
        raise BadRequest("name the evaluation text set: GET /v1/leaderboard?text=NAME", code="no_text")
    return leaderboard(session, text, viewer)
