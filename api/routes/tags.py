"""Named revisions (tags): list, create or move, delete."""

from __future__ import annotations

from deltazoo.api import schemas
from deltazoo.api.deps import DB
from deltazoo.services.refs import get_model
from deltazoo.services.tags import delete_tag, list_tags, set_tag
from fastapi import APIRouter, Response

router = APIRouter(tags=["tags"])
T = "/models/{org}/{name}/tags"


@router.get(T, response_model=schemas.TagList)
def get_tags(org: str, name: str, session: DB) -> schemas.TagList:
    return schemas.TagList(items=tuple(list_tags(session, get_model(session, org, name), f"{org}/{name}")))


@router.put(T + "/{tag}", response_model=schemas.Tag)
def put_tag(
    org: str, name: str, tag: str, body: schemas.TagSet, session: DB, response: Response
) -> schemas.Tag:
    info, created = set_tag(session, get_model(session, org, name), f"{org}/{name}", tag, body.revision)
    response.status_code = 201 if created else 200
    return info


@router.delete(T + "/{tag}", status_code=204)
def remove_tag(org: str, name: str, tag: str, session: DB) -> Response:
    delete_tag(session, get_model(session, org, name), f"{org}/{name}", tag)
    return Response(status_code=204)
