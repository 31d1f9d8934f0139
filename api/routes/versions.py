"""Versions: create, commit, detail, manifest, delete, artifacts."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from deltazoo.api import schemas
from deltazoo.api.auth import Viewer
from deltazoo.api.deps import DB, Enqueue, Store
from deltazoo.api.deps import settings as settings_dep
from deltazoo.api.file_response import object_response
from deltazoo.registry.objectstore import blob_key
from deltazoo.registry.settings import Settings
from deltazoo.services import views
from deltazoo.services.artifacts import find_artifact, request_artifact
from deltazoo.services.limits import UploadLimits
from deltazoo.services.pending import pending_versions
from deltazoo.services.refs import get_model, get_version, ref_string
from deltazoo.services.resumable import partials_for
from deltazoo.services.resume import find_resumable
from deltazoo.services.staging import sweep_stale_uploads
from deltazoo.services.token_limits import PendingLimit
from deltazoo.services.versions import DeclaredFile, commit_version, create_version, delete_version
from deltazoo.workers.jobs import held_since
from fastapi import APIRouter, Depends, Query, Request, Response

from deltazoo.schemas import PROFILE_NAME

router = APIRouter(tags=["versions"])
V = "/models/{org}/{name}/versions/{rev}"
Config = Annotated[Settings, Depends(settings_dep)]


@router.post("/models/{org}/{name}/versions", status_code=201, response_model=schemas.VersionCreated)
def post_version(
    org: str,
    name: str,
    body: schemas.VersionCreate,
    session: DB,
    viewer: Viewer,
    response: Response,
    settings: Config,
) -> schemas.VersionCreated:
    model = get_model(session, org, name)
    declared = [DeclaredFile(f.path, f.size, f.sha256) for f in body.files]
    lossy = body.retain == "lossy"
    found = None
    if body.resume:
        found = find_resumable(
            session, model, body.base, body.relation, body.profiles, declared, lossy, viewer=viewer
        )
    if found is not None:
        response.status_code = 200
        version, uploads = found
    else:
        limit = PendingLimit(settings.max_pending_versions, timedelta(hours=settings.staging_expiry_hours))
        version, uploads = create_version(
            session,
            model,
            body.base,
            body.relation,
            body.profiles,
            declared,
            lossy=lossy,
            viewer=viewer,
            pending_limit=limit,
        )
    return schemas.VersionCreated(
        version=views.version_summaries(session, [version], viewer)[0],
        uploads=tuple(schemas.Upload(path=p, needed=n) for p, n in uploads),
        resumed=found is not None,
    )


@router.get("/pending", response_model=schemas.PendingList)
def get_pending(
    session: DB, viewer: Viewer, settings: Config, limit: int = Query(100, ge=1, le=1000)
) -> schemas.PendingList:
    """Versions created and not committed: what the server holds of each and when it expires."""
    expiry = timedelta(hours=settings.staging_expiry_hours)
    pending = pending_versions(session, viewer, partials_for(settings.home), expiry, limit)
    return schemas.PendingList(items=tuple(pending))


@router.post(V + "/commit", status_code=202, response_model=schemas.Committed)
def post_commit(
    org: str,
    name: str,
    rev: str,
    session: DB,
    store: Store,
    enqueue: Enqueue,
    settings: Config,
    viewer: Viewer,
) -> schemas.Committed:
    _, version = get_version(session, org, name, rev)
    limits = UploadLimits(settings.max_tensor_mb << 20, settings.max_tensors)
    ref = ref_string(f"{org}/{name}", version.revision)
    job = commit_version(session, store, version, ref, enqueue, viewer, limits)
    expiry = timedelta(hours=settings.staging_expiry_hours)
    sweep_stale_uploads(session, store, expiry, partials_for(settings.home))
    summary = views.version_summaries(session, [version], viewer)[0]
    return schemas.Committed(version=summary, job=views.job_info(job))


@router.get(V, response_model=schemas.VersionDetail)
def get_version_detail(org: str, name: str, rev: str, session: DB, viewer: Viewer) -> schemas.VersionDetail:
    _, version = get_version(session, org, name, rev)
    return views.version_detail(session, version, viewer)


@router.get(V + "/manifest")
def get_manifest(org: str, name: str, rev: str, session: DB, viewer: Viewer) -> dict[str, Any]:
    _, version = get_version(session, org, name, rev)
    return views.manifest(session, version, ref_string(f"{org}/{name}", version.revision), viewer)


@router.delete(V, status_code=204)
def delete(
    org: str, name: str, rev: str, session: DB, store: Store, settings: Config, viewer: Viewer
) -> Response:
    _, version = get_version(session, org, name, rev)
    ref = ref_string(f"{org}/{name}", version.revision)
    delete_version(session, store, version, ref, held_since(settings), viewer=viewer)
    return Response(status_code=204)


@router.post(V + "/artifacts", status_code=202, response_model=schemas.ArtifactRequested)
def post_artifact(
    org: str, name: str, rev: str, body: schemas.ArtifactRequest, session: DB, enqueue: Enqueue
) -> schemas.ArtifactRequested:
    _, version = get_version(session, org, name, rev)
    ref = ref_string(f"{org}/{name}", version.revision)
    artifact, job = request_artifact(session, version, ref, body.profile, enqueue)
    return schemas.ArtifactRequested(artifact=views.artifact_info(artifact), job=views.job_info(job))


@router.get(V + "/artifacts/{profile}")
@router.head(V + "/artifacts/{profile}", operation_id="head_artifact")  # size and ETag without the bytes
def get_artifact(
    org: str, name: str, rev: str, profile: str, request: Request, session: DB, store: Store
) -> Response:
    _, version = get_version(session, org, name, rev)
    artifact = find_artifact(session, version, ref_string(f"{org}/{name}", version.revision), profile)
    assert artifact.blob is not None  # find_artifact returns ready artifacts only
    named = {PROFILE_NAME: artifact.profile}  # the canonical spelling, for the file name the SDK writes
    return object_response(request, store, blob_key(artifact.blob), artifact.bytes, artifact.blob, named)
