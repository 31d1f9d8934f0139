"""File uploads (streamed in, validated on the fly) and dense downloads (streamed out, ranges)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.deps import DB, Store
from registry.errors import BadRequest, DeltazooError
from registry.services.refs import get_version, ref_string
from registry.services.transfer import UploadSink, iter_file, parse_range, plan_file
from registry.services.versions import check_path, pending_file, record_upload
from registry.services.views import file_info

router = APIRouter(tags=["files"])
F = "/models/{org}/{name}/versions/{rev}/files/{path:path}"


@router.put(F, response_model=schemas.FileInfo)
async def put_file(
    org: str, name: str, rev: str, path: str, request: Request, session: DB, store: Store
) -> dict:
    if "content-length" not in request.headers:
        raise DeltazooError("send the file with a Content-Length header", code="length_required", status=411)
    check_path(path)

    def find():  # type: ignore[no-untyped-def]
        _, version = get_version(session, org, name, rev)
        return pending_file(session, version, path)

    file = await run_in_threadpool(find)
    await run_in_threadpool(session.commit)  # ends the read: no transaction stays open while bytes stream in
    sink = UploadSink(file)
    try:
        async for chunk in request.stream():
            if chunk:
                sink.feed(chunk)
        key = await run_in_threadpool(sink.finish, store)
    except BadRequest:
        sink.close()
        raise
    await run_in_threadpool(record_upload, session, store, file, key)
    return file_info(file)


@router.api_route(F, methods=["GET", "HEAD"])
def get_file(
    org: str, name: str, rev: str, path: str, request: Request, session: DB, store: Store
) -> Response:
    _, version = get_version(session, org, name, rev)
    plan = plan_file(session, store, version, path, ref_string(f"{org}/{name}", version.revision))
    headers = {"ETag": f'"{plan.sha256}"', "Accept-Ranges": "bytes"}
    wanted = parse_range(request.headers.get("range"), plan.size)
    if wanted is None:
        start, end, status = 0, plan.size, 200
    else:
        start, end, status = wanted[0], wanted[1], 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{plan.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    return StreamingResponse(
        iter_file(store, plan, start, end),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )
