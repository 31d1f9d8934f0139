"""Jobs, blobs and stats."""

from __future__ import annotations

from deltazoo.api import schemas
from deltazoo.api.auth import Viewer
from deltazoo.api.deps import DB, Store
from deltazoo.registry.errors import NotFound
from deltazoo.registry.objectstore import blob_key
from deltazoo.registry.repositories import BlobRepository
from deltazoo.services import views
from deltazoo.services.access import can_read_blob
from deltazoo.services.job_status import job_for
from deltazoo.services.versions import SHA_RE
from fastapi import APIRouter, Path
from fastapi.responses import StreamingResponse

router = APIRouter(tags=["zoo"])
MAX_ID = 2**63 - 1  # larger ids cannot exist (64-bit columns); they are 422, not a 500


@router.get("/jobs/{job_id}", response_model=schemas.Job)
def get_job(session: DB, viewer: Viewer, job_id: int = Path(ge=1, le=MAX_ID)) -> dict:
    return views.job_info(job_for(session, viewer, job_id))


@router.get("/blobs/{sha256}")
def get_blob(sha256: str, session: DB, store: Store, viewer: Viewer) -> StreamingResponse:
    """The stored (encoded) bytes of a blob that a model the caller may read refers to."""
    blob = BlobRepository(session).get(sha256) if SHA_RE.match(sha256) else None
    if blob is None or not can_read_blob(session, viewer, sha256):
        raise NotFound(f"no blob {sha256}; blob names come from a version's manifest", code="blob_not_found")
    return StreamingResponse(
        store.iter_chunks(blob_key(sha256)),
        media_type="application/octet-stream",
        headers={"Content-Length": str(blob.size), "ETag": f'"{sha256}"'},
    )


@router.get("/stats", response_model=schemas.Stats)
def get_stats(session: DB, viewer: Viewer) -> dict:
    return views.stats(session, viewer)
