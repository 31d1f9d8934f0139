"""The one error hierarchy: a machine-readable code, an HTTP status and a message saying what to do.

Services raise these; the API renders every one as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations


class DeltazooError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(DeltazooError):
    status = 400
    code = "bad_request"


class NotFound(DeltazooError):
    status = 404
    code = "not_found"


class Conflict(DeltazooError):
    status = 409
    code = "conflict"


class Unprocessable(DeltazooError):
    status = 422
    code = "invalid_request"


class RangeNotSatisfiable(DeltazooError):
    status = 416
    code = "range_not_satisfiable"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.headers = {"Content-Range": f"bytes */{size}"}  # RFC 9110: the size a range must lie in


class Unavailable(DeltazooError):
    status = 503
    code = "unavailable"


class TooManyRequests(DeltazooError):
    """429: the caller holds too much at once; ``retry_after`` (seconds) goes out as Retry-After."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
