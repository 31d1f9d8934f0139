"""File uploads (streamed in, validated on the fly) and dense downloads (streamed out, ranges).

What a body's ending does to the bytes received is ``services/uploads.py``'s; here are the headers.
"""

from __future__ import annotations

from deltazoo.api import schemas
from deltazoo.api.auth import Viewer
from deltazoo.api.body_feed import feed_body
from deltazoo.api.deps import DB, Store, upload_slot
from deltazoo.api.errors import error_body
from deltazoo.api.file_response import file_response
from deltazoo.api.http_ranges import parse_content_range
from deltazoo.registry.db import end_read
from deltazoo.registry.errors import BadRequest, DeltazooError
from deltazoo.registry.models import File
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.services.refs import get_version, ref_string
from deltazoo.services.resumable import PartialUploads, partials_for
from deltazoo.services.resume import confirm_held, held_complete
from deltazoo.services.storage import SHA_RE
from deltazoo.services.transfer import plan_file
from deltazoo.services.uploads import PartUpload, WholeUpload
from deltazoo.services.versions import check_path, pending_file
from deltazoo.services.views import file_info
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

router = APIRouter(tags=["files"])
SHA256_HEADER = "deltazoo-sha256"  # names a file declared without sha256, on the request with its last byte
F = "/models/{org}/{name}/versions/{rev}/files/{path:path}"


def receiving_file(session: Session, org: str, name: str, rev: str, path: str) -> File:
    """The declared file of a pending version that bytes are sent for; the read ends here, so no
    transaction stays open while the bytes stream in."""
    check_path(path)
    _, version = get_version(session, org, name, rev)
    file = pending_file(session, version, path)
    end_read(session)
    return file


@router.put(F, response_model=schemas.FileInfo)
async def put_file(
    org: str, name: str, rev: str, path: str, request: Request, session: DB, store: Store, viewer: Viewer
) -> schemas.FileInfo | JSONResponse:
    if "content-length" not in request.headers:
        raise DeltazooError("send the file with a Content-Length header", code="length_required", status=411)
    file = await run_in_threadpool(receiving_file, session, org, name, rev, path)
    with upload_slot(request, viewer.token_id):  # 429 past the token's concurrent uploads
        return await _put_file(file, request, session, store)


async def _put_file(
    file: File, request: Request, session: Session, store: ObjectStore
) -> schemas.FileInfo | JSONResponse:
    content_range = request.headers.get("content-range")
    if content_range == f"bytes */{file.size}":  # no bytes: the sha256 of a finished upload held
        return await _confirm_held(file, request, session, store)
    if content_range is not None:
        return await _put_part(file, content_range, request, _partials(request), session, store)
    upload = WholeUpload(_partials(request), file, store, request.headers.get(SHA256_HEADER))
    try:
        await feed_body(request, upload.feed)
    except ClientDisconnect:  # cut off: nothing is kept (a whole-file upload is sent again from its start)
        upload.reject()
        message = f"{file.path}: the upload was cut off before its last byte; send the file again"
        return JSONResponse(error_body("upload_interrupted", message), status_code=400)
    except BaseException:
        upload.reject()
        raise
    await run_in_threadpool(upload.finish, session, store)
    return file_info(file)


def _partials(request: Request) -> PartialUploads:
    return partials_for(request.app.state.settings.home)


async def _put_part(
    file: File, header: str, request: Request, partials: PartialUploads, session: Session, store: ObjectStore
) -> schemas.FileInfo | JSONResponse:
    """One part of a resumable upload: 202 until the last byte, then 200."""
    start, end = parse_content_range(header, file.size, file.path)
    if int(request.headers["content-length"]) != end - start:
        raise BadRequest(
            f"{file.path}: Content-Length {request.headers['content-length']} is not the "
            f"{end - start} bytes the Content-Range names",
            code="invalid_content_range",
        )
    part = PartUpload(partials, file, start, end, store, request.headers.get(SHA256_HEADER))
    try:
        await feed_body(request, part.feed, limit=end - start, too_much=lambda: part.too_much(header))
    except BadRequest:
        part.reject()
        raise
    except ClientDisconnect:  # cut off: what arrived stays, the client resumes from GET .../uploads
        message = f"{file.path}: the part was cut off; {part.keep()} bytes are received, resume from there"
        return JSONResponse(error_body("upload_interrupted", message), status_code=400)
    except BaseException:
        part.keep()
        raise
    received = await run_in_threadpool(part.finish, session, store)
    if received < file.size:
        return JSONResponse({"path": file.path, "size": file.size, "received": received}, status_code=202)
    return file_info(file)


async def _confirm_held(
    file: File, request: Request, session: Session, store: ObjectStore
) -> schemas.FileInfo:
    """``Content-Range: bytes */SIZE`` with ``Deltazoo-Sha256`` and no body: a resumed push names the
    bytes of an upload it finished before (``services.resume.confirm_held``)."""
    sha256 = request.headers.get(SHA256_HEADER, "")
    if request.headers.get("content-length") != "0" or not SHA_RE.match(sha256):
        raise BadRequest(
            f"{file.path}: 'Content-Range: bytes */{file.size}' takes no body and a Deltazoo-Sha256 header"
            " (64 lowercase hex digits)",
            code="invalid_content_range",
        )
    await run_in_threadpool(confirm_held, session, store, file, sha256)
    return file_info(file)


@router.get("/models/{org}/{name}/versions/{rev}/uploads/{path:path}")
def get_upload(org: str, name: str, rev: str, path: str, request: Request, session: DB) -> dict:
    """How many bytes of a resumable upload the server holds: the next part starts there; ``complete``:
    a finished upload of it is held, which a resumed push may claim by its sha256 (``_confirm_held``)."""
    check_path(path)
    _, version = get_version(session, org, name, rev)
    file = pending_file(session, version, path)
    received = _partials(request).received(file)
    complete = held_complete(file, received)
    return {"path": file.path, "size": file.size, "received": received, "complete": complete}


@router.get(F)
@router.head(F, operation_id="head_file")  # its own id: one shared id makes the OpenAPI ambiguous
def get_file(
    org: str, name: str, rev: str, path: str, request: Request, session: DB, store: Store
) -> Response:
    _, version = get_version(session, org, name, rev)
    plan = plan_file(session, store, version, path, ref_string(f"{org}/{name}", version.revision))
    return file_response(request, store, plan, {"ETag": f'"{plan.sha256}"'})
