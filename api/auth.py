"""Bearer tokens and private models (``services.access``); with auth off the server is open.

The check runs before every ``/v1`` route but health: it sets ``request.state.principal``, answers
401/403 for writes without the right token and 404 for a private model the caller may not read.
"""

from __future__ import annotations

from typing import Annotated

from deltazoo.registry.db import session_scope
from deltazoo.services.access import ANONYMOUS, OPEN, Principal
from deltazoo.services.tokens import authorise
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

READ_METHODS = ("GET", "HEAD", "OPTIONS")


async def _name_of_new_model(request: Request) -> tuple[str | None, str | None]:
    """``POST /v1/models`` names its namespace in the body (already read and cached by FastAPI)."""
    try:
        name = (await request.json()).get("name")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None, None
    if isinstance(name, str) and "/" in name:
        org, short = name.split("/", 1)
        return org, short
    return None, None


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def require_token(request: Request) -> None:
    settings = request.app.state.settings
    if not settings.auth:
        request.state.principal = OPEN
        return
    token = bearer_token(request)
    write = request.method not in READ_METHODS
    org, name = request.path_params.get("org"), request.path_params.get("name")
    creating = request.method == "POST" and request.url.path.rstrip("/").endswith("/v1/models")
    if creating:
        org, name = await _name_of_new_model(request)

    def check() -> Principal:
        with session_scope(settings) as session:  # a read of its own: it ends before the route's work
            return authorise(session, token, org, name, write=write, creating=creating)

    request.state.principal = await run_in_threadpool(check)


def current_principal(request: Request) -> Principal:
    return getattr(request.state, "principal", OPEN if not request.app.state.settings.auth else ANONYMOUS)


Viewer = Annotated[Principal, Depends(current_principal)]
