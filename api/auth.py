"""Bearer-token checks (on when ``settings.auth`` is true; the embedded default may run open)."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from registry.db import session_scope
from registry.services.tokens import authorize

READ_METHODS = ("GET", "HEAD", "OPTIONS")


async def _org_of_new_model(request: Request) -> str | None:
    """``POST /v1/models`` names its namespace in the body (already read and cached by FastAPI)."""
    try:
        name = (await request.json()).get("name")
    except (ValueError, AttributeError):
        return None
    return name.split("/", 1)[0] if isinstance(name, str) and "/" in name else None


async def require_token(request: Request) -> None:
    settings = request.app.state.settings
    if not settings.auth:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    org = request.path_params.get("org")
    if org is None and request.method == "POST" and request.url.path.rstrip("/").endswith("/v1/models"):
        org = await _org_of_new_model(request)

    def check() -> None:
        with session_scope(settings) as session:
            authorize(session, token or None, request.method not in READ_METHODS, org)

    await run_in_threadpool(check)
