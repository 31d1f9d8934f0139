"""Jobs, blobs and stats."""

from __future__ import annotations

from deltazoo.api import schemas
from deltazoo.api.auth import Viewer
from deltazoo.api.deps import DB, Store
from deltazoo.api.file_response import object_response
from deltazoo.registry.objectstore import blob_key
from deltazoo.services import views
from deltazoo.services.job_status import job_for
from deltazoo.services.storage import readable_blob
from fastapi import APIRouter, Path, Request, Response

router = APIRouter(tags=["zoo"])
MAX_ID = 2**63 - 1  # larger ids cannot exist (64-bit columns); they are 422, not a 500


@router.get("/jobs/{job_id}", response_model=schemas.Job)
def get_job(session: DB, viewer: Viewer, job_id: int = Path(ge=1, le=MAX_ID)) -> schemas.Job:
    return views.job_info(job_for(session, viewer, job_id))


@router.get("/blobs/{sha256}")
def download_blob(sha256: str, request: Request, session: DB, store: Store, viewer: Viewer) -> Response:
    """The stored (encoded) bytes of a blob that a model the caller may read refers to (Range too)."""
    blob = readable_blob(session, viewer, sha256)
    return object_response(request, store, blob_key(sha256), blob.size, sha256)


@router.get("/stats", response_model=schemas.Stats)
def get_stats(session: DB, viewer: Viewer) -> schemas.Stats:
    return views.stats(session, viewer)
