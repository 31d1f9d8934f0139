"""Every error leaves the API as ``{"error": {"code", "message"}}`` with the right status."""

from __future__ import annotations

import json
import logging
from typing import Any

from deltazoo.registry.errors import (
    BadRequest,
    Conflict,
    DeltazooError,
    NotFound,
    RangeNotSatisfiable,
    Unavailable,
    Unprocessable,
)
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "BadRequest",
    "Conflict",
    "DeltazooError",
    "NotFound",
    "RangeNotSatisfiable",
    "Unavailable",
    "Unprocessable",
    "RejectNul",
    "ShapedAnswer",
    "error_body",
    "error_headers",
    "install_error_handlers",
]
log = logging.getLogger("deltazoo.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    416: "range_not_satisfiable",
}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_headers(exc: DeltazooError) -> dict[str, str]:
    """The headers an error carries: ``Retry-After`` where it says when to retry, and its own (a 416's
    ``Content-Range: bytes */SIZE``)."""
    headers = dict(getattr(exc, "headers", None) or {})
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return headers


class ShapedAnswer(Exception):
    """An error already turned into its response (the Hub's shape, say), raised rather than returned so
    that it still passes through the request's dependencies: the request's database session rolls back
    what the failed request wrote, where a route that returned the error would have committed it."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ShapedAnswer)
    async def _shaped(_request: Request, exc: ShapedAnswer) -> JSONResponse:
        return exc.response

    @app.exception_handler(DeltazooError)
    async def _deltazoo(_request: Request, exc: DeltazooError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message), status_code=exc.status, headers=error_headers(exc)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse(
            error_body("invalid_request", "; ".join(parts) or "invalid request"), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route; see /docs for the API"
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    async def _retryable(_request: Request, exc: Exception) -> JSONResponse:
        return _unavailable(exc)

    for error in _unavailable_errors():  # handled by class: a 503, never a 500 with a traceback
        app.add_exception_handler(error, _retryable)

    from sqlalchemy.exc import IntegrityError

    @app.exception_handler(IntegrityError)
    async def _race(_request: Request, exc: IntegrityError) -> JSONResponse:
        """A unique key taken by a concurrent request between our check and our insert."""
        log.info("integrity race: %s", (str(exc).splitlines() or [""])[0][:300])
        message = "a concurrent request changed the same name or rows first; look again and retry"
        return JSONResponse(error_body("conflict", message), status_code=409)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal_error", f"{type(exc).__name__}: {exc}"), status_code=500)


def _unavailable_errors() -> tuple[type[Exception], ...]:
    """Errors that mean the database or the object store did not answer: retryable, not a bug."""
    from sqlalchemy import exc as sa_exc

    # TimeoutError: no pooled connection came free in time (a burst); the client retries after a pause
    errors: list[type[Exception]] = [sa_exc.OperationalError, sa_exc.DisconnectionError, sa_exc.TimeoutError]
    errors += [ConnectionError, TimeoutError]
    try:
        import urllib3.exceptions
        from minio.error import ServerError

        errors += [urllib3.exceptions.HTTPError, ServerError]
    except ImportError:  # the minio client is only needed with an S3 store
        pass
    return tuple(errors)


def _unavailable(exc: BaseException) -> JSONResponse:
    what = "the object store" if "sqlalchemy" not in type(exc).__module__ else "the database"
    first_line = (str(exc).splitlines() or [""])[0][:300]
    log.warning("%s did not answer: %s: %s", what, type(exc).__name__, first_line)
    message = f"{what} did not answer ({type(exc).__name__}); retry in a few seconds"
    return JSONResponse(error_body("unavailable", message), status_code=503, headers={"Retry-After": "2"})


class RejectNul:
    """ASGI middleware: a NUL character in the path or query string is a 400 ``invalid_characters``
    before any route runs (no name, path or parameter deltazoo knows holds one, and the database could
    not store or compare it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").lower()
            if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
                body = json.dumps(
                    error_body("invalid_characters", "the URL holds a NUL character (%00); remove it")
                ).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
                await send({"type": "http.response.start", "status": 400, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
