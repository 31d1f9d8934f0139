"""Jobs, blobs and stats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from functools import partial

from deltazoo.api import schemas
from deltazoo.api.auth import Viewer
from deltazoo.api.deps import DB, ServerSettings, Store
from deltazoo.api.file_response import object_response
from deltazoo.registry.errors import BadRequest
from deltazoo.registry.objectstore import blob_key
from deltazoo.services import views
from deltazoo.services.job_status import job_answer
from deltazoo.services.storage import readable_blob
from deltazoo.services.transfer import SEND_PIECE
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from deltazoo.schemas import BLOB_SIZES

router = APIRouter(tags=["zoo"])
MAX_ID = 2**63 - 1  # larger ids cannot exist (64-bit columns); they are 422, not a 500
MAX_BLOBS_AT_ONCE = 16  # blobs one ``GET /v1/blobs`` may ask for (a delta-only pull asks for 4)
MAX_JOB_WAIT_S = 30.0  # the longest a ``GET /v1/jobs/{id}?wait=`` holds its answer
JOB_LOOK_EVERY_S = 0.05  # how often a held answer looks at the job again


@router.get("/jobs/{job_id}", response_model=schemas.Job)
async def get_job(
    settings: ServerSettings,
    viewer: Viewer,
    job_id: int = Path(ge=1, le=MAX_ID),
    wait: float = Query(
        0.0,
        ge=0,
        le=MAX_JOB_WAIT_S,
        description="hold the answer up to this many seconds until the job has ended (a long poll)",
    ),
) -> schemas.Job:
    """A job's status; with ``wait``, answered as soon as the job ends (looked at every
    ``JOB_LOOK_EVERY_S``, each look a session of its own: nothing is held in between) or when ``wait``
    runs out. One held request replaces a client's polling, which cost the encode it waits for CPU
    (a version's detail every 50 ms slowed a 1 GiB encode by ~0.45 s) or time (polls backed off to
    0.5 s saw a finished job up to 0.5 s late)."""

    look = partial(job_answer, settings, viewer, job_id)
    info = await run_in_threadpool(look)
    until = time.monotonic() + wait
    while not info.done and (left := until - time.monotonic()) > 0:
        await asyncio.sleep(min(JOB_LOOK_EVERY_S, left))
        info = await run_in_threadpool(look)
    return info


@router.get("/blobs/{sha256}")
@router.head("/blobs/{sha256}", operation_id="head_blob")
def download_blob(sha256: str, request: Request, session: DB, store: Store, viewer: Viewer) -> Response:
    """The stored (encoded) bytes of a blob that a model the caller may read refers to (Range too)."""
    blob = readable_blob(session, viewer, sha256)
    return object_response(request, store, blob_key(sha256), blob.size, sha256)


@router.get("/blobs")
def download_blobs(
    session: DB, store: Store, viewer: Viewer, sha256: list[str] = Query(default_factory=list)
) -> Response:
    """Several stored blobs in one answer (``?sha256=A&sha256=B``), back to back in the order asked, each
    one's size in ``Deltazoo-Blob-Sizes``. A delta-only pull fetches one ~2 MiB blob per 8 MiB chunk, and
    the server spent more CPU on each request (routing, the session, the checks) than on sending its
    bytes. Each blob is checked as ``GET /v1/blobs/{sha256}`` checks it: one that the caller may not read
    makes the whole answer that route's 404."""
    if not 1 <= len(sha256) <= MAX_BLOBS_AT_ONCE:
        raise BadRequest(
            f"ask for 1 to {MAX_BLOBS_AT_ONCE} blobs at once (?sha256=...&sha256=...), not {len(sha256)}",
            code="bad_blob_count",
        )
    sizes = [readable_blob(session, viewer, name).size for name in sha256]

    def body() -> Iterator[bytes]:
        for name in sha256:
            yield from store.iter_chunks(blob_key(name), SEND_PIECE)

    headers = {"Content-Length": str(sum(sizes)), BLOB_SIZES: ",".join(map(str, sizes))}
    return StreamingResponse(body(), headers=headers, media_type="application/octet-stream")


@router.get("/stats", response_model=schemas.Stats)
def get_stats(session: DB, viewer: Viewer) -> schemas.Stats:
    return views.stats(session, viewer)
