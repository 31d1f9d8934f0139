"""A stored file as an HTTP answer: HEAD or GET, whole (200) or one Range (206), streamed as it is rebuilt.

Shared by the REST download route and the Hugging Face Hub's ``resolve`` route, which differ only in the
headers they add.
"""

from __future__ import annotations

from deltazoo.registry.objectstore import ObjectStore
from deltazoo.services.transfer import FilePlan, iter_file, parse_range
from fastapi import Request, Response
from fastapi.responses import StreamingResponse


def file_response(request: Request, store: ObjectStore, plan: FilePlan, headers: dict[str, str]) -> Response:
    """``headers`` plus Content-Length (and Content-Range for a Range request) over the file's bytes."""
    headers = {**headers, "Accept-Ranges": "bytes"}
    wanted = parse_range(request.headers.get("range"), plan.size)
    if wanted is None:
        start, end, status = 0, plan.size, 200
    else:
        start, end, status = wanted[0], wanted[1], 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{plan.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    body = iter_file(store, plan, start, end)
    return StreamingResponse(body, status_code=status, headers=headers, media_type="application/octet-stream")
