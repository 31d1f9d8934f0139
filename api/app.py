"""The FastAPI application (uvicorn factory: ``api.app:create_app``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from deltazoo.api.auth import require_token
from deltazoo.api.errors import RejectNul, install_error_handlers
from deltazoo.api.routes import (
    evaluations,
    files,
    health,
    hub,
    hub_upload,
    leaderboard,
    misc,
    models,
    tags,
    tokens,
    versions,
    web,
)
from deltazoo.registry.db import session_scope, upgrade_database
from deltazoo.registry.memory import bound_heap
from deltazoo.registry.objectstore import object_store_from_settings
from deltazoo.registry.settings import Settings, get_settings
from deltazoo.services.resumable import partials_for
from deltazoo.services.staging import sweep_stale_uploads
from deltazoo.services.storage import RAW_CACHE
from deltazoo.services.token_limits import UploadSlots
from deltazoo.services.tokens import ensure_admin_token
from deltazoo.services.transfer import HEADER_LIMITS
from deltazoo.workers.jobs import JobContext
from deltazoo.workers.orphan_sweep import start_orphan_sweeper
from fastapi import Depends, FastAPI

log = logging.getLogger("deltazoo.api")


def create_app(settings: Settings | None = None, migrate: bool = True) -> FastAPI:
    """The API; with no broker configured it runs jobs in-process (the embedded default)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bound_heap()  # tensor buffers go back to the system when freed (registry/memory.py)
        if migrate:
            upgrade_database(settings.resolved_database_url)
        app.state.store = object_store_from_settings(settings)
        RAW_CACHE.max_bytes = settings.tensor_cache_mb << 20
        HEADER_LIMITS.max_tensors = settings.max_tensors
        if settings.admin_token:
            with session_scope(settings) as session:
                ensure_admin_token(session, settings.admin_token)
        with session_scope(settings) as session:  # uploads of versions never committed (expired)
            expiry = timedelta(hours=settings.staging_expiry_hours)
            sweep_stale_uploads(session, app.state.store, expiry, partials_for(settings.home))
        sweeper = start_orphan_sweeper(settings, app.state.store)  # incomplete uploads, unnamed objects
        runner = None
        if settings.embedded:
            from deltazoo.workers.runner import InProcessRunner

            def submit(job_id: int) -> None:  # jobs that start other jobs go through the same pool
                assert runner is not None
                runner.submit(job_id)

            runner = InProcessRunner(JobContext(settings, app.state.store, submit))
            app.state.dispatcher = runner
            runner.start()
        else:
            from deltazoo.workers.celery_app import CeleryDispatcher, make_celery

            app.state.dispatcher = CeleryDispatcher(make_celery(settings))
        try:
            yield
        finally:
            sweeper.set()
            if runner is not None:
                runner.stop(wait=True)

    app = FastAPI(
        title="deltazoo",
        version="0.1.0",
        lifespan=lifespan,
        description="Storage for families of fine-tuned models (docs/REST.md).",
    )
    app.state.settings = settings
    app.state.upload_slots = UploadSlots(settings.max_concurrent_uploads)  # services/token_limits.py
    install_error_handlers(app)
    app.add_middleware(RejectNul)
    for module in (models, versions, files, misc, tokens, tags, leaderboard, evaluations):
        app.include_router(module.router, prefix="/v1", dependencies=[Depends(require_token)])
    app.include_router(health.router, prefix="/v1")
    app.include_router(web.router)
    app.include_router(hub_upload.router)
    app.include_router(hub.router)  # last: its /{org}/{name}/resolve/... must not shadow the web pages
    return app
