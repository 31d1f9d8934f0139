"""The Hugging Face Hub protocol's write side: create repo, preupload, the Git LFS batch API with its
basic transfer, commit (NDJSON), and the Xet token route answered with what to do instead
(services/hub_commit.py, hub_lfs.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from deltazoo.api.body_feed import feed_body
from deltazoo.api.deps import DB, Enqueue, Store, upload_slot
from deltazoo.api.errors import ShapedAnswer
from deltazoo.api.hub_ndjson import read_commit
from deltazoo.api.hub_protocol import HubRoute, HubViewer, check_writable, hub_error
from deltazoo.registry.errors import BadRequest, DeltazooError
from deltazoo.services import hub_commit, hub_lfs
from deltazoo.services.model_card import front_matter_problem
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

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
        raise ShapedAnswer(response) from None  # raised: the session rolls back what the refusal wrote
    return {**created, "url": f"{base}/{created['name']}"}


@router.delete("/api/repos/delete", response_model=None)
async def delete_repo(request: Request, session: DB, store: Store, viewer: HubViewer) -> dict:
    body = await _json_body(request)
    await run_in_threadpool(hub_commit.hub_delete_repo, session, store, viewer, body)
    return {}


@router.put(REPO + "/settings", response_model=None)
async def update_settings(
    org: str, name: str, request: Request, session: DB, store: Store, viewer: HubViewer
) -> dict:
    body = await _json_body(request)
    await run_in_threadpool(hub_commit.hub_update_settings, session, store, viewer, f"{org}/{name}", body)
    return {}


@router.post(REPO + "/preupload/{revision}")
async def preupload(
    org: str, name: str, revision: str, request: Request, session: DB, viewer: HubViewer
) -> dict:
    hub_commit.check_no_pull_request(request.query_params.get("create_pr"))
    await check_writable(request, viewer, f"{org}/{name}")
    files = (await _json_body(request)).get("files")
    if not isinstance(files, list):
        raise BadRequest("the body needs a 'files' list", code="invalid_request")
    large_files = request.app.state.settings.hub_large_files
    return await run_in_threadpool(
        hub_commit.preupload, session, viewer, f"{org}/{name}", revision, files, large_files
    )


@router.post("/{org}/{name}.git/info/lfs/objects/batch")
async def lfs_batch(
    org: str, name: str, request: Request, session: DB, store: Store, viewer: HubViewer
) -> Response:
    await check_writable(request, viewer, f"{org}/{name}")
    body = await _json_body(request)

    def answer() -> dict:
        model = hub_commit.writable_model(session, viewer, f"{org}/{name}")
        ref = body.get("ref")
        if isinstance(ref, dict) and isinstance(ref.get("name"), str):
            hub_commit.check_main(ref["name"].removeprefix("refs/heads/"))
        base = str(request.base_url).rstrip("/")
        return hub_lfs.batch(session, store, viewer, model, body, base, f"{base}/{org}/{name}.git/info/lfs")

    return JSONResponse(await run_in_threadpool(answer), media_type="application/vnd.git-lfs+json")


@router.put("/api/lfs/objects/{ticket}")
async def lfs_upload(ticket: str, request: Request, store: Store) -> dict:
    """The basic transfer's upload href: the client PUTs the object here without its token (the ticket
    the batch handed out admits it), streamed through the transfer service into staging."""
    sink, key, token_id = await run_in_threadpool(hub_lfs.open_ticket, store, ticket)
    try:
        with upload_slot(request, token_id), cut_off_is_a_400("the LFS object"):  # the ticket's token
            await feed_body(request, sink.feed)
            await run_in_threadpool(sink.finish, store, key)
    except BaseException:
        sink.close()
        raise
    return {"oid": sink.file.sha256, "size": sink.size}


@router.post("/{org}/{name}.git/info/lfs/verify")
async def lfs_verify(
    org: str, name: str, request: Request, session: DB, store: Store, viewer: HubViewer
) -> dict:
    body = await _json_body(request)

    def check() -> None:
        hub_lfs.verify(store, hub_commit.writable_model(session, viewer, f"{org}/{name}"), body)

    await run_in_threadpool(check)
    return {"message": "ok"}


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
    hub_commit.check_no_pull_request(request.query_params.get("create_pr"))
    await check_writable(request, viewer, f"{org}/{name}")  # before its body is read
    ops = hub_commit.CommitOperations()
    try:
        with upload_slot(request, viewer.token_id), cut_off_is_a_400("the commit"):  # files inline
            await read_commit(request.stream(), ops)
        version, ref = await run_in_threadpool(
            hub_commit.commit_in_turn, session, store, enqueue, viewer, f"{org}/{name}", revision, ops
        )
    finally:
        ops.close()
    await run_in_threadpool(hub_commit.wait_published, session, version, ref)
    base = str(request.base_url).rstrip("/")
    return {
        "commitOid": version.commit_id,
        "commitUrl": f"{base}/{org}/{name}/commit/{version.commit_id}",
        "success": True,
        "revision": version.revision,
    }


@router.post(REPO + "/tag/{revision}")
async def create_tag(
    org: str, name: str, revision: str, request: Request, session: DB, viewer: HubViewer
) -> dict:
    body = await _json_body(request)
    await run_in_threadpool(hub_commit.hub_create_tag, session, viewer, f"{org}/{name}", revision, body)
    return {}


@router.delete(REPO + "/tag/{tag}")
def delete_tag(org: str, name: str, tag: str, session: DB, viewer: HubViewer) -> dict:
    hub_commit.hub_delete_tag(session, viewer, f"{org}/{name}", tag)
    return {}


@router.post(REPO + "/branch/{branch:path}")
@router.delete(REPO + "/branch/{branch:path}", operation_id="hub_delete_branch")
def branch(org: str, name: str, branch: str, viewer: HubViewer) -> dict:
    """``create_branch`` / ``delete_branch``: refused in the Hub's shape, saying what to use instead."""
    raise BadRequest(
        f"deltazoo has no branches (asked for {branch!r}): a repository has one line of versions, main;"
        " name a version with a tag instead (create_tag)",
        code="branches_unsupported",
    )


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
        "this server does not speak Xet: it takes large files through Git LFS; run the upload again with"
        " HF_HUB_DISABLE_XET=1 (huggingface_hub then uses the LFS batch API)",
        code="xet_not_supported",
        status=400,
    )


MAX_JSON_BODY = 8 << 20  # a preupload of MAX_PREUPLOAD_FILES paths fits many times over


@contextmanager
def cut_off_is_a_400(what: str) -> Iterator[None]:
    """A client gone before the body's end (an interrupted ``upload_folder``): a 400 saying so, logged
    as one line, not an unhandled error; nothing of it is kept."""
    try:
        yield
    except ClientDisconnect:
        raise BadRequest(
            f"{what} was cut off before its last byte; send it again", code="upload_interrupted"
        ) from None


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read up to ``MAX_JSON_BODY`` bytes (beyond: 413)."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BODY:
            raise DeltazooError(
                f"the request body is over {MAX_JSON_BODY >> 20} MiB; these routes take small JSON bodies",
                code="body_too_large",
                status=413,
            )
    try:
        body = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body must be JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    return body
