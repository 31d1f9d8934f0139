"""The SDK's one error hierarchy, and ``raise_for_status`` that maps HTTP answers onto it.

Every error carries ``message`` (what is wrong and what to do), ``code`` (the server's machine code,
e.g. ``base_not_found``) and ``status`` (the HTTP status, or None for errors raised on this side).
Errors also inherit the matching built-in, so ``except FileNotFoundError`` catches a 404 and
``except ValueError`` catches a 400/422.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

# the root, defined in a contract module so that deltazoo.refs raises errors of this hierarchy too
from deltazoo.error_base import DeltazooError as DeltazooError


class UsageError(DeltazooError, ValueError):
    """The caller asked for something malformed before any request was sent (bad name, missing dir)."""


class DeltazooConnectionError(DeltazooError, ConnectionError):
    """The server could not be reached (refused, timed out, DNS)."""


class ClientError(DeltazooError):
    """The server answered 4xx: the request was refused; the message says what to change."""


class BadRequestError(ClientError, ValueError):
    """400 / 413 / 416 / 422: the request's content is invalid."""


class AuthenticationError(ClientError, PermissionError):
    """401: no token, or the token is unknown."""


class PermissionDenied(ClientError, PermissionError):
    """403: the token is valid but lacks the scope for this namespace."""


class NotFoundError(ClientError, FileNotFoundError):
    """404: the model, version, file, job or artifact does not exist."""


class ConflictError(ClientError):
    """409: the request conflicts with the current state (exists, not pending, not ready, ...)."""


class RateLimitedError(ClientError):
    """429: too many requests; retried automatically before it is raised."""


class ServerError(DeltazooError):
    """5xx: the server failed; this is a server bug or an outage, not the caller's mistake."""


class JobFailedError(DeltazooError):
    """A server-side job (encoding a version, building an artifact) ended in ``failed``."""

    def __init__(self, message: str, *, job_id: int | None = None, code: str | None = "job_failed") -> None:
        super().__init__(message, code=code)
        self.job_id = job_id


class IntegrityError(DeltazooError):
    """Downloaded or reconstructed bytes do not match their sha256 or size."""


_BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    413: BadRequestError,
    416: BadRequestError,
    422: BadRequestError,
    429: RateLimitedError,
}


def _error_body(response: httpx.Response) -> tuple[str | None, str | None]:
    """``(code, message)`` from ``{"error": {"code", "message"}}``, FastAPI's ``{"detail"}``, or None."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        return None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return (str(err["code"]) if err.get("code") else None), (str(err.get("message") or "") or None)
    if isinstance(body, dict) and "detail" in body:
        return None, json.dumps(body["detail"]) if not isinstance(body["detail"], str) else body["detail"]
    return None, None


def error_for_response(response: httpx.Response) -> DeltazooError:
    """The typed error for a non-2xx ``response`` (its body must have been read)."""
    status = response.status_code
    code, message = _error_body(response)
    where = f"{response.request.method} {response.request.url.path}"
    if message is None:
        text = response.text.strip()[:200] if response.content else ""
        message = f"{where} answered {status} {response.reason_phrase}" + (f": {text}" if text else "")
    if status >= 500:
        return ServerError(
            f"{message} (server error {status} on {where}; this is a server bug or outage — "
            "check the server's log and retry)",
            code=code,
            status=status,
        )
    cls = _BY_STATUS.get(status, ClientError)
    return cls(message, code=code, status=status)


def raise_for_status(response: httpx.Response) -> None:
    """Raise the typed error matching ``response`` when it is not a 2xx answer."""
    if response.is_success:
        return
    if not response.is_stream_consumed:
        response.read()
    raise error_for_response(response)
