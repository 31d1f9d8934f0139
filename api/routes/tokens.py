"""API tokens (admin only): create (the secret is shown once), list without secrets, delete."""

from __future__ import annotations

from deltazoo.api import schemas
from deltazoo.api.auth import Viewer
from deltazoo.api.deps import DB
from deltazoo.registry.models import ApiToken
from deltazoo.services.access import check_admin
from deltazoo.services.tokens import create_token, delete_token, list_tokens
from fastapi import APIRouter, Path, Response

router = APIRouter(tags=["tokens"])


def _info(row: ApiToken, namespace: str | None) -> schemas.TokenInfo:
    return schemas.TokenInfo(
        id=row.id,
        name=row.name,
        namespace=namespace,
        scopes=tuple(row.scopes),
        admin=row.admin,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


@router.post("/tokens", status_code=201, response_model=schemas.TokenCreated)
def post_token(body: schemas.TokenCreate, session: DB, viewer: Viewer) -> schemas.TokenCreated:
    check_admin(viewer)
    row, secret = create_token(session, body.name, body.namespace, body.scopes, body.admin)
    return schemas.TokenCreated(**{**dict(_info(row, body.namespace)), "token": secret})


@router.get("/tokens", response_model=schemas.TokenList)
def get_tokens(session: DB, viewer: Viewer) -> schemas.TokenList:
    check_admin(viewer)
    return schemas.TokenList(items=tuple(_info(row, ns) for row, ns in list_tokens(session)))


@router.delete("/tokens/{token_id}", status_code=204)
def remove_token(session: DB, viewer: Viewer, token_id: int = Path(ge=1, le=2**63 - 1)) -> Response:
    check_admin(viewer)
    delete_token(session, token_id)
    return Response(status_code=204)
