"""The Hugging Face Hub protocol's write side: create repo, preupload, commit (NDJSON), and the Xet
token route answered with what to do instead (services/hub_commit.py)."""

from __future__ import annotations

import json
from typing import Any

from deltazoo.api.deps import DB, Enqueue, Store
from deltazoo.api.hub_ndjson import read_commit
from deltazoo.api.hub_protocol import HubRoute, HubViewer, hub_error
from deltazoo.registry.errors import BadRequest, DeltazooError
from deltazoo.services import hub_commit
from deltazoo.services.model_card import front_matter_problem
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

router = APIRouter(tags=["hugging face hub"], route_class=HubRoute)
REPO = "/api/models/{org}/{name}"


@router.post("/api/repos/create", response_model=None)
async def create_repo(request: Request, session: DB, viewer: HubViewer) -> dict | Response:
    body = await _json_body(request)
    private = body.get("private") is True or body.get("visibility") == "private"
    name, org = body.get("name"), body.get("organization")
    if body.get("type") not in (None, "model"):
        raise BadRequest("deltazoo stores models only (repo_type='model')", code="invalid_repo_type")
    base = str(request.base_url).rstrip("/")
    try:
        created = await run_in_threadpool(hub_commit.create_repo, session, viewer, name, org, private)
    except DeltazooError as exc:
        if exc.code != "model_exists":
            raise
        response = hub_error(request, exc)  # the Hub's 409 names the repository (create_repo(exist_ok=True))
        response.body = json.dumps({"error": exc.message, "url": f"{base}/{org}/{name}"}).encode()
        response.headers["content-length"] = str(len(response.body))
        return response
    return {**created, "url": f"{base}/{created['name']}"}


@router.post(REPO + "/preupload/{revision}")
async def preupload(
    org: str, name: str, revision: str, request: Request, session: DB, viewer: HubViewer
) -> dict:
    files = (await _json_body(request)).get("files")
    if not isinstance(files, list):
        raise BadRequest("the body needs a 'files' list", code="invalid_request")
    return await run_in_threadpool(hub_commit.preupload, session, viewer, f"{org}/{name}", revision, files)


@router.post(REPO + "/commit/{revision}")
async def commit(
    org: str,
    name: str,
    revision: str,
    request: Request,
    session: DB,
    store: Store,
    enqueue: Enqueue,
    viewer: HubViewer,
) -> dict:
    ops = hub_commit.CommitOperations()
    try:
        await read_commit(request.stream(), ops)
        version, _ = await run_in_threadpool(
            hub_commit.commit, session, store, enqueue, viewer, f"{org}/{name}", revision, ops
        )
    finally:
        ops.close()
    base = str(request.base_url).rstrip("/")
    return {
        "commitOid": version.commit_id,
        "commitUrl": f"{base}/{org}/{name}/commit/{version.commit_id}",
        "success": True,
        "revision": version.revision,
    }


@router.post("/api/validate-yaml", response_model=None)
async def validate_yaml(request: Request) -> dict | Response:
    """What ``upload_folder`` / ``ModelCard.push_to_hub`` ask before sending a README.md."""
    content = (await _json_body(request)).get("content")
    problem: str | None = "'content' must be the card's text"
    if isinstance(content, str):
        problem = front_matter_problem(content)
    if problem is None:
        return {"errors": [], "warnings": []}
    return JSONResponse({"error": problem, "errors": [{"message": problem}], "warnings": []}, status_code=400)


@router.get(REPO + "/xet-write-token/{revision}")
@router.get(REPO + "/xet-read-token/{revision}", operation_id="hub_xet_read_token")
def xet_token(org: str, name: str, revision: str) -> dict:
    raise DeltazooError(
        "this server does not speak Xet; deltazoo answers preupload with uploadMode 'regular', so only"
        " files forced through LFS/Xet get here: set HF_HUB_DISABLE_XET=1",
        code="xet_not_supported",
        status=400,
    )


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body must be JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    return body
