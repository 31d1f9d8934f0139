"""The round trip through the full stack: Postgres + Celery worker over Redis + a real S3 server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.servers import Stack
from tests.test_api_support import base_state, checkpoint, finetune_state, push, sha, wait_job

pytestmark = pytest.mark.stack


@pytest.fixture
def client(stack_server: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack_server.admin_token}"}
    with httpx.Client(base_url=stack_server.url, headers=headers, timeout=60) as c:
        yield c


def test_stack_push_pull_bit_exact(client: httpx.Client, unique_org: str) -> None:
    base = base_state(seed=5)
    files = {"base": checkpoint(base), "ft": checkpoint(finetune_state(base, seed=6))}
    job = push(client, f"{unique_org}/base", files["base"])["job"]
    assert wait_job(client, job["id"])["status"] == "succeeded"
    job = push(client, f"{unique_org}/ft", files["ft"], base=f"{unique_org}/base@1")["job"]
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", done
    for model, checkpoint_files in ((f"{unique_org}/base", files["base"]), (f"{unique_org}/ft", files["ft"])):
        for path, data in checkpoint_files.items():
            r = client.get(f"/v1/models/{model}/versions/1/files/{path}")
            assert r.status_code == 200
            assert sha(r.content) == sha(data)
    r = client.get(
        f"/v1/models/{unique_org}/ft/versions/1/files/model.safetensors", headers={"Range": "bytes=10-2000"}
    )
    assert r.status_code == 206 and r.content == files["ft"]["model.safetensors"][10:2001]
    detail = client.get(f"/v1/models/{unique_org}/ft/versions/1").json()
    assert 0 < detail["stored_bytes"] < detail["logical_bytes"]
    assert {t["encoding"] for t in detail["tensors"]} >= {"same", "delta", "delta-rows", "plain"}
    lineage = client.get(f"/v1/models/{unique_org}/base/lineage").json()
    assert lineage["descendants"] == [f"{unique_org}/ft@1"]


def test_stack_requires_token(stack_server: Stack) -> None:
    assert httpx.get(f"{stack_server.url}/v1/models").status_code == 200  # public models: anyone reads
    r = httpx.post(f"{stack_server.url}/v1/models", json={"name": "anon/model"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{stack_server.url}/v1/health").json()["status"] == "ok"


def test_stack_job_waits_in_the_queue_for_a_worker(
    stack_server: Stack, client: httpx.Client, unique_org: str
) -> None:
    files = checkpoint(base_state(seed=9))
    stack_server.worker.kill()
    try:
        job = push(client, f"{unique_org}/queued", files)["job"]
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    finally:
        stack_server.worker.start()
    assert wait_job(client, job["id"])["status"] == "succeeded"
    for path, data in files.items():
        assert sha(client.get(f"/v1/models/{unique_org}/queued/versions/1/files/{path}").content) == sha(data)
