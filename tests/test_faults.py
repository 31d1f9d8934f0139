"""Faults in the full stack: a worker SIGKILLed mid-encode, the S3 server and Postgres connections
going away mid-work, concurrent pushes. After each, every job completes and every pull is sha256-exact.

The module runs its own stack (own S3 server, database and Redis database) because it stops and
restarts services; the worker beats its heartbeat every 0.5 s so a killed worker's job is sent again
within about 1.5 s (workers/heartbeat.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save

from tests.servers import ApiServer, CeleryWorker, full_stack_env, log_problems, start_api_server
from tests.services import (
    ADMIN_TOKEN,
    S3Server,
    child_env,
    flush_redis,
    redis_url,
    start_s3_server,
    temporary_database,
    wait_until,
    xdist_worker_index,
)
from tests.test_api_support import base_state, checkpoint, finetune_state, push, sha, wait_job

pytestmark = pytest.mark.stack


class FaultStack:
    def __init__(self, s3: S3Server, api: ApiServer, worker: CeleryWorker, database: str) -> None:
        self.s3, self.api, self.worker, self.database = s3, api, worker, database

    def restart_s3(self) -> None:
        self.s3.process.start()
        client = self.s3.client()

        def answers() -> bool:
            try:
                return bool(client.bucket_exists(self.s3.bucket))
            except Exception:  # noqa: BLE001 - not up yet
                return False

        wait_until(answers, timeout=60, what="the S3 server answering again")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    from deltazoo.registry.db import upgrade_database

    root = tmp_path_factory.mktemp("faults")
    broker = redis_url(db=14 - 2 * max(0, xdist_worker_index()))  # not a db the shared stack_server uses
    flush_redis(broker)
    s3 = start_s3_server(root / "s3")
    with temporary_database() as database:
        upgrade_database(database)
        settings = {
            **full_stack_env(database, broker, s3, ADMIN_TOKEN),
            "DELTAZOO_JOB_HEARTBEAT_S": "0.5",
            # progress committed after every tensor: the faults land part-way through a job, however fast
            # the machine encodes (with the default 1 s a 2 s job showed no midpoint to the poll)
            "DELTAZOO_JOB_COMMIT_EVERY_S": "0",
        }
        (root / "worker").mkdir()
        worker = CeleryWorker(child_env({"DELTAZOO_HOME": str(root / "wh"), **settings}), root / "worker")
        worker.start()
        api = start_api_server(root / "home", settings)
        try:
            yield FaultStack(s3, api, worker, database.rsplit("/", 1)[-1])
        finally:
            api.stop()
            worker.kill()
            s3.stop()
            flush_redis(broker)
    problems = [p for p in log_problems(api.process.log_text()) if '" 503' not in p]
    assert not problems, "\n\n".join(problems[:5])


@pytest.fixture
def client(stack: FaultStack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=stack.api.url, headers=headers, timeout=60) as c:
        yield c


def many_tensors(count: int, seed: int) -> dict[str, torch.Tensor]:
    """A checkpoint of ``count`` small tensors: its encode takes long enough to be interrupted."""
    g = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.randn(64, 128, generator=g).to(torch.bfloat16) for i in range(count)}


def wait_mid_job(client: httpx.Client, job_id: int) -> None:
    """Poll until the job has committed some work and is not finished (progress strictly in (0, 1))."""

    def midway() -> bool:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] not in ("succeeded", "failed"), f"the job ended before the fault: {job}"
        return bool(0 < job["progress"] < 1)

    wait_until(midway, timeout=120, what=f"job {job_id} part-way", interval=0.02)


def assert_exact(client: httpx.Client, model: str, files: dict[str, bytes], rev: int = 1) -> None:
    for path, data in files.items():
        r = client.get(f"/v1/models/{model}/versions/{rev}/files/{path}")
        assert r.status_code == 200, r.text
        assert sha(r.content) == sha(data), f"{model}@{rev}/{path} is not bit-exact"


def manifest_blobs(client: httpx.Client, model: str, rev: int = 1) -> set[str]:
    manifest = client.get(f"/v1/models/{model}/versions/{rev}/manifest").json()
    blobs: set[str] = set()
    for f in manifest["files"]:
        blobs |= {b for b in (f.get("blob"), f.get("header_blob")) if b}
        blobs |= {t["blob"] for t in f.get("tensors", []) if t["blob"]}
    return blobs


def assert_blobs_stored(stack: FaultStack, blobs: set[str]) -> None:
    s3 = stack.s3.client()
    missing = [b for b in blobs if not _exists(s3, stack.s3.bucket, f"blobs/{b[:2]}/{b}")]
    assert not missing, f"{len(missing)} blob(s) recorded but not in the object store: {missing[:3]}"


def _exists(s3: Any, bucket: str, key: str) -> bool:
    from minio.error import S3Error

    try:
        s3.stat_object(bucket, key)
        return True
    except S3Error:
        return False


def test_worker_killed_mid_encode_resumes(stack: FaultStack, client: httpx.Client, unique_org: str) -> None:
    state = many_tensors(400, seed=1)
    files = {"model.safetensors": save(state)}
    model = f"{unique_org}/killed"
    job = push(client, model, files)["job"]
    wait_mid_job(client, job["id"])
    stack.worker.kill()
    stack.worker.start()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2, f"the job was not run again after the kill: {done}"
    detail = client.get(f"/v1/models/{model}/versions/1").json()
    assert len(detail["tensors"]) == len(state), "tensors recorded twice or lost across the restart"
    assert_exact(client, model, files)
    assert_blobs_stored(stack, manifest_blobs(client, model))


def test_s3_down_mid_encode_job_retries(stack: FaultStack, client: httpx.Client, unique_org: str) -> None:
    base = many_tensors(300, seed=2)
    files = {"model.safetensors": save(base)}
    model = f"{unique_org}/s3down"
    job = push(client, model, files)["job"]
    wait_mid_job(client, job["id"])
    stack.s3.process.stop(grace=5.0)
    try:
        wait_until(
            lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued",
            timeout=120,
            what="the job noticing the store is gone and waiting to retry",
        )
    finally:
        stack.restart_s3()
    done = wait_job(client, job["id"], timeout_s=300)
    assert done["status"] == "succeeded", done
    assert_exact(client, model, files)
    assert_blobs_stored(stack, manifest_blobs(client, model))


def test_s3_down_during_upload_is_retryable(stack: FaultStack, client: httpx.Client, unique_org: str) -> None:
    files = checkpoint(base_state(seed=3))
    model = f"{unique_org}/upload"
    assert client.post("/v1/models", json={"name": model}).status_code == 201
    body = {"files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]}
    assert client.post(f"/v1/models/{model}/versions", json=body).status_code == 201
    data = files["model.safetensors"]
    url = f"/v1/models/{model}/versions/1/files/model.safetensors"
    stack.s3.process.stop(grace=5.0)
    try:
        r = client.put(url, content=data)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable" and "retry" in r.json()["error"]["message"]
    finally:
        stack.restart_s3()
    for path, content in files.items():
        r = client.put(f"/v1/models/{model}/versions/1/files/{path}", content=content)
        assert r.status_code == 200, r.text
    r = client.post(f"/v1/models/{model}/versions/1/commit")
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    assert_exact(client, model, files)


def _terminate_connections(database: str) -> int:
    import psycopg2

    from tests.services import POSTGRES_HOST, POSTGRES_PORT, postgres_user

    conn = psycopg2.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=postgres_user(), dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def test_postgres_connections_dropped(stack: FaultStack, client: httpx.Client, unique_org: str) -> None:
    assert client.get("/v1/models").status_code == 200  # the API's pool holds a connection now
    assert _terminate_connections(stack.database) >= 1
    r = client.get("/v1/models")
    assert r.status_code in (200, 503), r.text  # reconnected (pool_pre_ping) or a retryable answer
    if r.status_code == 503:
        assert r.json()["error"]["code"] == "unavailable"
    assert client.get("/v1/models").status_code == 200

    # mid-upload: the connections go away while the body streams in
    files = checkpoint(base_state(seed=4))
    model = f"{unique_org}/pgdrop"
    assert client.post("/v1/models", json={"name": model}).status_code == 201
    body = {"files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]}
    assert client.post(f"/v1/models/{model}/versions", json=body).status_code == 201
    data = files["model.safetensors"]

    def body_with_fault() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        _terminate_connections(stack.database)
        yield data[len(data) // 2 :]

    url = f"/v1/models/{model}/versions/1/files/model.safetensors"
    r = client.put(url, content=body_with_fault(), headers={"Content-Length": str(len(data))})
    assert r.status_code in (200, 503), r.text
    if r.status_code == 503:
        r = client.put(url, content=data)
    assert r.status_code == 200, r.text
    r = client.put(f"/v1/models/{model}/versions/1/files/config.json", content=files["config.json"])
    assert r.status_code == 200, r.text

    # mid-encode: the worker's connection goes away, the job retries and completes
    big = {"model.safetensors": save(many_tensors(300, seed=5))}
    job = push(client, f"{unique_org}/pgdrop-encode", big)["job"]
    wait_mid_job(client, job["id"])
    assert _terminate_connections(stack.database) >= 1
    r = client.post(f"/v1/models/{model}/versions/1/commit")
    assert r.status_code in (202, 503), r.text
    if r.status_code == 503:
        r = client.post(f"/v1/models/{model}/versions/1/commit")
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    assert wait_job(client, job["id"], timeout_s=300)["status"] == "succeeded"
    assert_exact(client, model, files)
    assert_exact(client, f"{unique_org}/pgdrop-encode", big)


def test_concurrent_finetune_pushes_dedup(stack: FaultStack, client: httpx.Client, unique_org: str) -> None:
    base = base_state(seed=7)
    base_files = checkpoint(base)
    job = push(client, f"{unique_org}/base", base_files)["job"]
    assert wait_job(client, job["id"])["status"] == "succeeded"
    tunes = {f"{unique_org}/ft{i}": checkpoint(finetune_state(base, seed=10 + i)) for i in range(3)}
    tunes[f"{unique_org}/ft0-copy"] = tunes[f"{unique_org}/ft0"]  # the same bytes under another name
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def push_one(model: str, files: dict[str, bytes]) -> None:
        try:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            with httpx.Client(base_url=stack.api.url, headers=headers, timeout=60) as c:
                job = push(c, model, files, base=f"{unique_org}/base@1")["job"]
                results[model] = wait_job(c, job["id"])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=push_one, args=item) for item in tunes.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert {m: r["status"] for m, r in results.items()} == dict.fromkeys(tunes, "succeeded")
    for model, files in tunes.items():
        assert_exact(client, model, files)
    base_blobs = manifest_blobs(client, f"{unique_org}/base")
    ft0 = manifest_blobs(client, f"{unique_org}/ft0")
    copy = manifest_blobs(client, f"{unique_org}/ft0-copy")
    # whichever of the two identical fine-tunes encoded second stored nothing of its own
    assert copy <= ft0 | base_blobs or ft0 <= copy | base_blobs, (ft0 - base_blobs, copy - base_blobs)
    for model in tunes:  # the unchanged tensor is stored once, as the base's
        detail = client.get(f"/v1/models/{model}/versions/1").json()
        norm = next(t for t in detail["tensors"] if t["name"] == "norm.weight")
        assert norm["encoding"] == "same"
    everything = base_blobs.union(*(manifest_blobs(client, m) for m in tunes))
    assert_blobs_stored(stack, everything)
