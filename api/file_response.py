"""A stored file as an HTTP answer: HEAD or GET, whole (200) or one Range (206), streamed as it is rebuilt.

Shared by the REST download route and the Hugging Face Hub's ``resolve`` route, which differ only in the
headers they add; ``object_response`` answers the same way for one stored object (a blob, a packed
profile), so the SDK's downloader resumes those with ``Range`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import quote

from deltazoo.api.http_ranges import parse_range
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.services.transfer import SEND_PIECE, FilePlan, iter_file
from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from deltazoo.schemas import CLIENT_VERIFIES

Body = Callable[[int, int], Iterator[bytes | memoryview]]  # (start, end) -> the bytes in between


def content_disposition(filename: str) -> str:
    """``inline`` naming ``filename`` (RFC 6266): an ASCII ``filename`` for old clients, and the exact name
    as ``filename*=UTF-8''...`` (a header value cannot carry characters outside latin-1)."""
    fallback = filename.encode("ascii", "replace").decode().replace("\\", "_").replace('"', "_")
    fallback = "".join(c if c.isprintable() else "_" for c in fallback)
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _ranged(request: Request, size: int, headers: dict[str, str], body: Body) -> Response:
    """``headers`` plus Content-Length (and Content-Range for a Range request) over ``body(start, end)``.

    Conditional requests against the ``ETag`` in ``headers`` (every stored file and object has one, its
    sha256): ``If-None-Match`` naming it is answered 304 without a body; a ``Range`` whose ``If-Range``
    names another validator is ignored (200, the whole file: a resumed download must not join bytes of
    two different files)."""
    headers = {**headers, "Accept-Ranges": "bytes"}
    etag = headers.get("ETag")
    if etag is not None and _names(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={k: v for k, v in headers.items() if k != "Content-Length"})
    if_range = request.headers.get("if-range")
    stale = if_range is not None and (etag is None or if_range.strip() != etag)
    wanted = None if stale else parse_range(request.headers.get("range"), size)
    if wanted is None:
        start, end, status = 0, size, 200
    else:
        start, end, status = wanted[0], wanted[1], 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    return StreamingResponse(
        body(start, end), status_code=status, headers=headers, media_type="application/octet-stream"
    )


def _names(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` list names ``etag`` (weakly, as RFC 9110 compares it) or is ``*``."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags


def file_response(request: Request, store: ObjectStore, plan: FilePlan, headers: dict[str, str]) -> Response:
    """A version's file (rebuilt from its blobs as it streams). A client that checks the file's sha256
    itself (``Deltazoo-Client-Verifies: sha256``: the SDK) gets it rebuilt without the server hashing
    each piece too (``iter_file``'s ``verify``)."""
    verify = request.headers.get(CLIENT_VERIFIES, "").strip().lower() != "sha256"
    return _ranged(
        request, plan.size, headers, lambda start, end: iter_file(store, plan, start, end, verify=verify)
    )


def object_response(
    request: Request,
    store: ObjectStore,
    key: str,
    size: int,
    etag: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """One stored object of ``size`` bytes as it is stored, with ``ETag: "<etag>"`` and ``headers``."""

    def body(start: int, end: int) -> Iterator[bytes]:  # large pieces: a blob is often one piece
        if start == 0 and end == size:
            yield from store.iter_chunks(key, SEND_PIECE)
            return
        for offset in range(start, end, SEND_PIECE):
            yield store.get_range(key, offset, min(SEND_PIECE, end - offset))

    return _ranged(request, size, {"ETag": f'"{etag}"', **(headers or {})}, body)
