"""The Hugging Face Hub protocol beside ``/v1``: what huggingface_hub, transformers and the hf CLI call
with ``HF_ENDPOINT`` (or ``endpoint=``) pointing at deltazoo (services/hub.py)."""

from __future__ import annotations

from deltazoo.api.deps import DB, Store
from deltazoo.api.file_response import content_disposition, file_response
from deltazoo.api.hub_protocol import HubRoute, HubViewer, revision_and_path
from deltazoo.registry.errors import Unprocessable
from deltazoo.services import hub
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

router = APIRouter(tags=["hugging face hub"], route_class=HubRoute)
REPO = "/api/models/{org}/{name}"


@router.get("/api/models")
def list_models(
    request: Request,
    session: DB,
    viewer: HubViewer,
    search: str = "",
    author: str = "",
    limit: int = Query(hub.MAX_LISTED_MODELS, ge=1, le=hub.MAX_LISTED_MODELS),
    offset: int = Query(0, ge=0, le=2**31),
) -> Response:
    items, more = hub.list_models(session, viewer, search, author, limit, offset)
    response = _json(items)
    if more:
        url = request.url.include_query_params(offset=offset + limit, limit=limit)
        response.headers["Link"] = f'<{url}>; rel="next"'
    return response


@router.get(REPO)
def model_info(org: str, name: str, session: DB, store: Store, viewer: HubViewer) -> dict:
    return hub.model_info(session, store, hub.open_repo(session, viewer, f"{org}/{name}", None))


@router.get(REPO + "/revision/{revision:path}")
def model_info_at(org: str, name: str, revision: str, session: DB, store: Store, viewer: HubViewer) -> dict:
    repo = hub.open_repo(session, viewer, f"{org}/{name}", hub.git_revision(revision))
    return hub.model_info(session, store, repo)


@router.get(REPO + "/tree/{revision}")
@router.get(REPO + "/tree/{revision}/{path:path}", operation_id="hub_tree_path")
def tree(
    org: str,
    name: str,
    revision: str,
    session: DB,
    viewer: HubViewer,
    request: Request,
    path: str = "",
    recursive: bool = False,
) -> list[dict]:
    revision, path = revision_and_path(request, at=6)
    repo = hub.open_repo(session, viewer, f"{org}/{name}", revision, empty_main=True)
    return hub.tree(session, repo, path, recursive)


@router.post(REPO + "/paths-info/{revision:path}")
async def paths_info(
    org: str, name: str, revision: str, request: Request, session: DB, viewer: HubViewer
) -> list:
    form = await request.form()
    paths = [str(p) for p in form.getlist("paths")]
    repo = hub.open_repo(session, viewer, f"{org}/{name}", hub.git_revision(revision), empty_main=True)
    return hub.paths_info(session, repo, paths)


@router.get(REPO + "/commits/{revision:path}")
def commits(
    org: str,
    name: str,
    revision: str,
    request: Request,
    session: DB,
    viewer: HubViewer,
    p: int = Query(0, ge=0, le=2**31),
) -> Response:
    repo = hub.open_repo(session, viewer, f"{org}/{name}", hub.git_revision(revision), empty_main=True)
    items, more = hub.commits(session, viewer, repo, p)
    response = _json(items)
    if more:
        response.headers["Link"] = f'<{request.url.include_query_params(p=p + 1)}>; rel="next"'
    return response


@router.get(REPO + "/refs")
def refs(org: str, name: str, session: DB, viewer: HubViewer) -> dict:
    return hub.refs(session, hub.open_repo(session, viewer, f"{org}/{name}", None))


@router.get("/api/whoami-v2")
def whoami(session: DB, viewer: HubViewer) -> dict:
    return hub.whoami(session, viewer)


@router.get("/{org}/{name}/resolve/{revision}/{path:path}")
@router.head("/{org}/{name}/resolve/{revision}/{path:path}", operation_id="hub_resolve_head")
def resolve(
    org: str,
    name: str,
    revision: str,
    path: str,
    request: Request,
    session: DB,
    store: Store,
    viewer: HubViewer,
) -> Response:
    revision, path = revision_and_path(request, at=4)
    repo = hub.open_repo(session, viewer, f"{org}/{name}", revision, empty_main=True)
    found = hub.resolve_file(session, store, repo, path)
    plan = found.plan
    etag = f'"{plan.sha256}"'
    headers = {
        "X-Repo-Commit": found.commit_id,
        "ETag": etag,
        "X-Linked-Etag": etag,
        "X-Linked-Size": str(plan.size),
        "Content-Disposition": content_disposition(path.rsplit("/", 1)[-1]),
    }
    return file_response(request, store, plan, headers)


def _json(items: list[dict]) -> Response:
    from fastapi.responses import JSONResponse

    return JSONResponse(items)


@router.get("/api/agent-harnesses")
def agent_harnesses() -> dict:
    """huggingface_hub asks every run for the registry it detects AI agent harnesses by; deltazoo keeps
    none: the registry that turns detection off, rather than a 404 in the log at every ``hf`` command."""
    return {"standardEnvVars": [], "harnesses": {}}


@router.get("/api/models/{name}")
@router.get("/api/models/{name}/revision/{revision:path}", operation_id="hub_one_segment_revision")
@router.get("/{name}/resolve/{revision}/{path:path}", operation_id="hub_one_segment_resolve")
@router.head("/{name}/resolve/{revision}/{path:path}", operation_id="hub_one_segment_resolve_head")
def one_segment_repository(name: str, viewer: HubViewer) -> Response:
    """A repository id without a namespace (``gpt2``): RepoNotFound in the Hub's shape, saying why, where
    a bare 404 made transformers report a network problem. (Registered last: ``org/name`` routes first.)"""
    raise Unprocessable(
        f"{name!r} is not a repository id deltazoo knows: its repositories are ORG/NAME (acme/{name}, say)",
        code="invalid_name",
    )

