"""Models: create, list and search, detail, settings, lineage."""

from __future__ import annotations

from deltazoo.api import schemas
from deltazoo.api.auth import Viewer
from deltazoo.api.deps import DB, Store
from deltazoo.services import views
from deltazoo.services.catalog import MAX_CURSOR, search_models
from deltazoo.services.lineage import DEFAULT_PAGE, MAX_PAGE, lineage_page
from deltazoo.services.model_settings import update_model
from deltazoo.services.refs import get_model
from deltazoo.services.versions import create_model, delete_model
from fastapi import APIRouter, Query, Response

router = APIRouter(tags=["models"])


@router.post("/models", status_code=201, response_model=schemas.Model)
def post_model(
    body: schemas.ModelCreate, session: DB, response: Response, viewer: Viewer
) -> schemas.Model:
    model, created = create_model(session, body.name, body.description, body.private, body.exist_ok, viewer)
    if not created:
        response.status_code = 200
    return views.model_detail(session, model, body.name, viewer)


@router.get("/models", response_model=schemas.ModelList)
def list_models(
    session: DB,
    viewer: Viewer,
    search: str = "",
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=2**63 - 1),
    cursor: str | None = Query(None, max_length=MAX_CURSOR),
) -> schemas.ModelList:
    return search_models(session, viewer, search, limit, offset, cursor)


@router.get("/models/{org}/{name}", response_model=schemas.Model)
def get_model_detail(org: str, name: str, session: DB, viewer: Viewer) -> schemas.Model:
    return views.model_detail(session, get_model(session, org, name), f"{org}/{name}", viewer)


@router.patch("/models/{org}/{name}", response_model=schemas.Model)
def patch_model(
    org: str, name: str, body: schemas.ModelUpdate, session: DB, store: Store, viewer: Viewer
) -> schemas.Model:
    model = get_model(session, org, name)
    update_model(
        session, store, model, f"{org}/{name}", viewer, description=body.description, private=body.private
    )
    return views.model_detail(session, model, f"{org}/{name}", viewer)


@router.get("/models/{org}/{name}/lineage", response_model=schemas.Lineage)
def get_lineage(
    org: str,
    name: str,
    session: DB,
    viewer: Viewer,
    limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
    cursor: str | None = Query(None, max_length=40),
) -> schemas.Lineage:
    model = get_model(session, org, name)
    return lineage_page(session, model, f"{org}/{name}", viewer, limit, cursor).body


@router.delete("/models/{org}/{name}", status_code=204)
def delete(org: str, name: str, session: DB, store: Store, viewer: Viewer) -> Response:
    delete_model(session, store, get_model(session, org, name), f"{org}/{name}", viewer)
    return Response(status_code=204)
