"""HTTP details of the Hugging Face Hub protocol: its error shape and its tokens.

huggingface_hub (``utils/_http.py: hf_raise_for_status``) keys on the ``X-Error-Code`` header
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and shows ``X-Error-Message`` and the body's
``{"error": "<message>"}``; a 401 on a repository is read as "not found or private". A missing file
names the commit (``X-Repo-Commit``) so that the client caches its absence.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import unquote

from deltazoo.api.auth import bearer_token
from deltazoo.api.errors import ShapedAnswer, error_headers
from deltazoo.registry.db import session_scope
from deltazoo.registry.errors import DeltazooError
from deltazoo.services.access import ANONYMOUS, OPEN, Principal
from deltazoo.services.hub import MissingEntry, git_revision
from deltazoo.services.hub_commit import writable_model
from deltazoo.services.tokens import principal_for
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_REPO_CODES = ("model_not_found", "invalid_name")
_REVISION_CODES = ("version_not_found", "invalid_revision")


def hub_error(request: Request, exc: DeltazooError) -> JSONResponse:
    """``exc`` as the Hub answers it: status, ``X-Error-Code`` / ``X-Error-Message``, ``{"error": ...}``."""
    status, message = exc.status, exc.message
    headers = {**error_headers(exc), "X-Error-Message": _header_safe(message)}
    if exc.code in _REPO_CODES:
        headers["X-Error-Code"] = "RepoNotFound"
        principal = getattr(request.state, "principal", ANONYMOUS)
        anonymous = principal.token_id is None and not principal.admin
        status = 401 if anonymous else 404  # without a token, "missing" and "private" look the same
    elif exc.code in _REVISION_CODES:
        headers["X-Error-Code"], status = "RevisionNotFound", 404
    elif exc.code == "file_not_found":
        headers["X-Error-Code"], status = "EntryNotFound", 404
        if isinstance(exc, MissingEntry) and exc.commit_id is not None:
            headers["X-Repo-Commit"] = exc.commit_id
    elif exc.code == "unauthorized" and exc.status == 401 and "not known" in message:
        headers["X-Error-Message"] = INVALID_CREDENTIALS
    return JSONResponse({"error": message, "code": exc.code}, status_code=status, headers=headers)


def _header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")[:500]


class HubRoute(APIRoute):
    """A route whose errors (deltazoo's and request validation) leave in the Hub's shape. They are raised
    on as ``ShapedAnswer``: returned from here, the request's session would commit what the failed
    request had written (a refused commit's version, left pending)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except DeltazooError as exc:
                raise ShapedAnswer(hub_error(request, exc)) from None
            except RequestValidationError as exc:
                parts = [
                    f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
                    for e in exc.errors()
                ]
                error = DeltazooError(
                    "; ".join(parts) or "invalid request", code="invalid_request", status=400
                )
                raise ShapedAnswer(hub_error(request, error)) from None

        return route


async def hub_principal(request: Request) -> Principal:
    """The caller: a deltazoo token sent as ``Authorization: Bearer`` (HF_TOKEN for the Hub client)."""
    settings = request.app.state.settings
    if not settings.auth:
        principal = OPEN
    else:
        token = bearer_token(request)

        def lookup() -> Principal:
            with session_scope(settings) as session:
                return principal_for(session, token) if token else ANONYMOUS

        principal = await run_in_threadpool(lookup)
    request.state.principal = principal
    return principal


HubViewer = Annotated[Principal, Depends(hub_principal)]


async def check_writable(request: Request, viewer: Principal, repo_id: str) -> None:
    """``viewer`` may write ``repo_id``: checked before a body is read (in a short session of its own), so
    a caller without the right token sends nothing the server reads or keeps."""
    settings = request.app.state.settings

    def check() -> None:
        with session_scope(settings) as session:
            writable_model(session, viewer, repo_id)

    await run_in_threadpool(check)


def revision_and_path(request: Request, at: int) -> tuple[str, str]:
    """The revision and the file path of a Hub URL whose ``at``-th segment is the revision, as the client
    wrote them. huggingface_hub quotes a revision's slashes (``refs%2Fheads%2Fmain``); the server decodes
    the path before routing, which then splits such a revision in two, so the split is made again on the
    raw path. Git ref names are then what they name (``services.hub.git_revision``)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    parts = raw.decode("latin-1").split("?", 1)[0].split("/")
    revision, path = unquote(parts[at]), unquote("/".join(parts[at + 1 :]))
    return git_revision(revision), path

