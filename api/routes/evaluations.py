"""Evaluation text sets and explicit evaluation requests (docs/REST.md, "Evaluation and leaderboard")."""

from __future__ import annotations

from deltazoo.api.deps import DB, Enqueue, ServerSettings, Store
from deltazoo.registry.errors import BadRequest
from deltazoo.services import views
from deltazoo.services.evaluation import (
    TooLarge,
    delete_text,
    list_texts,
    register_text,
    request_evaluation,
    text_info,
)
from deltazoo.services.refs import get_version, ref_string
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

router = APIRouter(tags=["evaluation"])


class EvaluationRequest(BaseModel):
    text: str


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    """The request body, refused as soon as it passes ``max_bytes`` (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"text set is larger than {max_bytes} bytes; upload a smaller held-out sample")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"text set is larger than {max_bytes} bytes; upload a smaller held-out sample")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/texts", status_code=201)
async def post_text(
    request: Request,
    session: DB,
    store: Store,
    enqueue: Enqueue,
    settings: ServerSettings,
    name: str = "",
    description: str = "",
) -> dict:
    """Register a UTF-8 text set: raw body, ``?name=NAME[&description=...]``."""
    if not name:
        raise BadRequest("name the text set: POST /v1/texts?name=NAME with the text as body", code="no_name")
    data = await _read_capped(request, settings.max_text_bytes)
    def register() -> dict:
        limits = settings.max_text_bytes, settings.eval_max_versions
        text = register_text(session, store, name, data, description, *limits, enqueue)
        return text_info(text)

    return await run_in_threadpool(register)


@router.get("/texts")
def get_texts(session: DB) -> dict:
    return {"items": [text_info(t) for t in list_texts(session)]}


@router.delete("/texts/{name}", status_code=204)
def delete_text_set(name: str, session: DB, store: Store) -> Response:
    """Forget a text set (admin with auth on, as registering one): its evaluations and leaderboard go."""
    delete_text(session, store, name)
    return Response(status_code=204)


@router.post("/models/{org}/{name}/versions/{rev}/evaluations", status_code=202)
def post_evaluation(
    org: str, name: str, rev: str, body: EvaluationRequest, session: DB, store: Store, enqueue: Enqueue
) -> dict:
    _, version = get_version(session, org, name, rev)
    ref = ref_string(f"{org}/{name}", version.revision)
    evaluation, job = request_evaluation(session, version, ref, body.text, enqueue)
    return {
        "ref": ref,
        "text": body.text,
        "status": evaluation.status,
        "bpb": evaluation.bits_per_byte,
        "job": views.job_info(job) if job else None,
    }
