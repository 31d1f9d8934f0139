"""File uploads (streamed in, validated on the fly) and dense downloads (streamed out, ranges)."""

from __future__ import annotations

from deltazoo.api import schemas
from deltazoo.api.body_feed import feed_body
from deltazoo.api.deps import DB, Store
from deltazoo.api.errors import error_body
from deltazoo.api.file_response import file_response
from deltazoo.registry.errors import BadRequest, DeltazooError
from deltazoo.registry.models import File
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.services.refs import get_version, ref_string
from deltazoo.services.resumable import PartialUploads, parse_content_range, partials_for
from deltazoo.services.transfer import UploadSink, plan_file
from deltazoo.services.versions import check_path, pending_file, record_upload
from deltazoo.services.views import file_info
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

router = APIRouter(tags=["files"])
F = "/models/{org}/{name}/versions/{rev}/files/{path:path}"


@router.put(F, response_model=schemas.FileInfo)
async def put_file(
    org: str, name: str, rev: str, path: str, request: Request, session: DB, store: Store
) -> dict | JSONResponse:
    if "content-length" not in request.headers:
        raise DeltazooError("send the file with a Content-Length header", code="length_required", status=411)
    check_path(path)

    def find():  # type: ignore[no-untyped-def]
        _, version = get_version(session, org, name, rev)
        return pending_file(session, version, path)

    file = await run_in_threadpool(find)
    await run_in_threadpool(session.commit)  # ends the read: no transaction stays open while bytes stream in
    partials = _partials(request)
    content_range = request.headers.get("content-range")
    if content_range is not None:
        return await _put_part(file, content_range, request, partials, session, store)
    partials.abandon(file)  # a one-request upload replaces a resumable one left unfinished
    sink = UploadSink(file, scratch_dir=store.scratch_dir())
    try:
        await feed_body(request, sink.feed)
        key = await run_in_threadpool(sink.finish, store)
    except BadRequest:
        sink.close()
        raise
    await run_in_threadpool(record_upload, session, store, file, key)
    return file_info(file)


def _partials(request: Request) -> PartialUploads:
    return partials_for(request.app.state.settings.home)


async def _put_part(
    file: File, header: str, request: Request, partials: PartialUploads, session: Session, store: ObjectStore
) -> dict | JSONResponse:
    """One part of a resumable upload (services/resumable.py): 202 until the last byte, then 200."""
    start, end = parse_content_range(header, file.size, file.path)
    if int(request.headers["content-length"]) != end - start:
        raise BadRequest(
            f"{file.path}: Content-Length {request.headers['content-length']} is not the "
            f"{end - start} bytes the Content-Range names",
            code="invalid_content_range",
        )
    sink = partials.begin(file, start)

    def too_much() -> BadRequest:
        return BadRequest(
            f"{file.path}: more bytes arrived than Content-Range {header!r} names",
            code="invalid_content_range",
        )

    try:
        await feed_body(request, sink.feed, limit=end - start, too_much=too_much)
    except BadRequest:
        partials.discard(file)
        raise
    except ClientDisconnect:  # cut off: what arrived stays, the client resumes from GET .../uploads
        received = partials.keep(file, sink)
        message = f"{file.path}: the part was cut off; {received} bytes are received, resume from there"
        return JSONResponse(error_body("upload_interrupted", message), status_code=400)
    except BaseException:
        partials.keep(file, sink)
        raise
    if sink.size < file.size:
        received = partials.keep(file, sink)
        return JSONResponse({"path": file.path, "size": file.size, "received": received}, status_code=202)
    partials.complete(file, sink)
    try:
        key = await run_in_threadpool(sink.finish, store)
    except BadRequest:
        partials.discard(file)
        raise
    except BaseException:  # e.g. the store did not answer: the last part is sent again
        partials.rewind(file, start)
        raise
    partials.discard(file)
    await run_in_threadpool(record_upload, session, store, file, key)
    return file_info(file)


@router.get("/models/{org}/{name}/versions/{rev}/uploads/{path:path}")
def get_upload(org: str, name: str, rev: str, path: str, request: Request, session: DB) -> dict:
    """How many bytes of a resumable upload the server holds: the next part starts there."""
    check_path(path)
    _, version = get_version(session, org, name, rev)
    file = pending_file(session, version, path)
    return {"path": file.path, "size": file.size, "received": _partials(request).received(file)}


@router.get(F)
@router.head(F, operation_id="head_file")  # its own id: one shared id makes the OpenAPI ambiguous
def get_file(
    org: str, name: str, rev: str, path: str, request: Request, session: DB, store: Store
) -> Response:
    _, version = get_version(session, org, name, rev)
    plan = plan_file(session, store, version, path, ref_string(f"{org}/{name}", version.revision))
    return file_response(request, store, plan, {"ETag": f'"{plan.sha256}"'})
