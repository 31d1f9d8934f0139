"""GET /v1/health: 200 when the database and the object store answer (no token needed)."""

from __future__ import annotations

from deltazoo.api import schemas
from deltazoo.api.deps import Store
from deltazoo.api.errors import error_body
from deltazoo.registry.db import ping_database
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get(
    "/health", response_model=schemas.Health, responses={503: {"description": "a dependency is down"}}
)
def health(request: Request, store: Store) -> object:
    result = {"status": "ok", "database": "ok", "object_store": "ok"}
    try:
        ping_database(request.app.state.settings)
    except Exception as exc:  # any failure means "not answering"
        result["database"] = f"error: {type(exc).__name__}: {exc}"
    try:
        store.ping()
    except Exception as exc:
        result["object_store"] = f"error: {type(exc).__name__}: {exc}"
    if result["database"] != "ok" or result["object_store"] != "ok":
        result["status"] = "error"
        body = error_body(
            "unavailable", f"database: {result['database']}; object store: {result['object_store']}"
        )
        return JSONResponse({**body, **result}, status_code=503)
    return result
