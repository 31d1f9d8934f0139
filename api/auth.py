"""Bearer-token checks (on when ``settings.auth`` is true; the embedded default may run open)."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from registry.db import session_scope
from registry.services.tokens import authorize

READ_METHODS = ("GET", "HEAD", "OPTIONS")


async def require_token(request: Request) -> None:
    settings = request.app.state.settings
    if not settings.auth:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    org = request.path_params.get("org")

    def check() -> None:
        with session_scope(settings) as session:
            authorize(session, token or None, request.method not in READ_METHODS, org)

    await run_in_threadpool(check)
