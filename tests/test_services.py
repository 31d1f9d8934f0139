"""The test harness itself: the S3, Postgres and Redis fixtures work, and the checkpoint helpers are sound."""

from __future__ import annotations

import io
import json
import secrets
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.checkpoints import (
    TINY_LLAMA_SHAPES,
    UNCHANGED_TENSOR,
    CheckpointPair,
    file_sha256,
    make_checkpoint,
    random_tensors,
    tree_sha256,
)
from tests.servers import Stack, log_problems
from tests.services import (
    S3Server,
    check_postgres,
    check_redis,
    free_port,
    port_answers,
    redis_db_number,
    weed_binary,
    xdist_worker_id,
)


def test_weed_binary_comes_from_the_wheel() -> None:
    path = weed_binary()
    assert path.name == "weed" and path.is_file()


def test_s3_put_get_round_trip(s3_server: S3Server) -> None:
    client = s3_server.client()
    assert client.bucket_exists(s3_server.bucket)
    payload = secrets.token_bytes(300_000)
    key = f"harness/{secrets.token_hex(4)}"
    client.put_object(s3_server.bucket, key, io.BytesIO(payload), len(payload))
    response = client.get_object(s3_server.bucket, key)
    try:
        assert response.read() == payload
    finally:
        response.close()
        response.release_conn()
    client.remove_object(s3_server.bucket, key)


def test_s3_refuses_wrong_credentials(s3_server: S3Server) -> None:
    from minio import Minio
    from minio.error import S3Error

    intruder = Minio(s3_server.endpoint, access_key=s3_server.access_key, secret_key="wrong", secure=False)
    with pytest.raises(S3Error):
        intruder.list_buckets()


def test_empty_postgres_database_is_usable_and_dropped(empty_postgres_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(empty_postgres_url)
    try:
        with engine.begin() as conn:
            tables = sa.text("select count(*) from pg_tables where schemaname = 'public'")
            assert conn.execute(tables).scalar() == 0
            conn.execute(sa.text("create table t (x int)"))
            conn.execute(sa.text("insert into t values (41), (1)"))
            assert conn.execute(sa.text("select sum(x) from t")).scalar() == 42
    finally:
        engine.dispose()


def test_postgres_url_is_migrated_to_head(postgres_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select version_num from alembic_version")).scalar()
    finally:
        engine.dispose()


def test_redis_url_names_this_workers_own_db(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.connection_pool.connection_kwargs["db"] == redis_db_number() >= 1
        key = f"harness-{secrets.token_hex(4)}"
        client.set(key, b"1")
        assert client.get(key) == b"1"
        client.delete(key)
    finally:
        client.close()


def test_checkpoint_pair_shares_exactly_one_tensor(checkpoint_pair: CheckpointPair) -> None:
    base = load_file(str(checkpoint_pair.base / "model.safetensors"))
    finetune = load_file(str(checkpoint_pair.finetune / "model.safetensors"))
    assert base.keys() == finetune.keys() == TINY_LLAMA_SHAPES.keys()
    identical = {name for name in base if torch.equal(base[name], finetune[name])}
    assert identical == {UNCHANGED_TENSOR}
    for name, tensor in finetune.items():
        assert tensor.dtype == torch.bfloat16
        delta = (tensor.float() - base[name].float()).abs().max().item()
        assert delta < 0.5, f"{name}: fine-tune drifted by {delta}, not a small noise"
    assert json.loads((checkpoint_pair.base / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_checkpoint_pair_loads_in_transformers(checkpoint_pair: CheckpointPair) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is a server extra")
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint_pair.finetune)
    state = model.state_dict()
    for name, tensor in checkpoint_pair.finetune_tensors.items():
        assert torch.equal(state[name].to(tensor.dtype), tensor), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_make_checkpoint_round_trips_every_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = random_tensors({"a": (3, 5), "b": (7,)}, dtype=dtype, seed=3)
    directory = make_checkpoint(tmp_path / "ckpt", tensors, {"architectures": ["X"]})
    loaded = load_file(str(directory / "model.safetensors"))
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    hashes = tree_sha256(directory)
    assert set(hashes) == {"model.safetensors", "config.json"}
    assert hashes["model.safetensors"] == file_sha256(directory / "model.safetensors")


def test_log_problems_finds_tracebacks_and_5xx_only() -> None:
    log = "\n".join(
        [
            'INFO:     127.0.0.1:5 - "GET /v1/health HTTP/1.1" 200 OK',
            'INFO:     127.0.0.1:5 - "GET /v1/models/x HTTP/1.1" 404 Not Found',
            'INFO:     127.0.0.1:5 - "POST /v1/models HTTP/1.1" 500 Internal Server Error',
            "Traceback (most recent call last):",
            '  File "workers/jobs.py", line 156, in run_job',
            "    HANDLERS[job.kind](s, job, ctx)",
            "ValueError: boom",
            'INFO:     127.0.0.1:5 - "GET /v1/jobs/1 HTTP/1.1" 200 OK',
        ]
    )
    problems = log_problems(log)
    assert len(problems) == 2
    assert "500 Internal Server Error" in problems[0]
    assert problems[1].startswith("Traceback") and problems[1].endswith("ValueError: boom")


def test_service_checks_pass_here_and_say_what_to_do_when_down() -> None:
    assert check_postgres() is None and check_redis() is None
    closed = free_port()
    assert not port_answers("127.0.0.1", closed)
    postgres_down, redis_down = check_postgres(port=closed), check_redis(port=closed)
    assert postgres_down is not None and f":{closed}" in postgres_down and "pg_ctlcluster" in postgres_down
    assert redis_down is not None and f":{closed}" in redis_down and "redis-server" in redis_down


def test_embedded_server_answers_health(embedded_server: str) -> None:
    import httpx

    assert embedded_server.startswith("http://127.0.0.1:")
    assert httpx.get(f"{embedded_server}/v1/health", timeout=10).status_code == 200


def _celery_nodes(broker_url: str) -> set[str]:
    from celery import Celery

    app = Celery(broker=broker_url)
    try:
        return {node for reply in app.control.ping(timeout=3.0) for node in reply}
    finally:
        app.close()


def test_stack_worker_can_be_killed_and_restarted(stack_server: Stack) -> None:
    import httpx

    worker = stack_server.worker
    first_pid, first_starts = worker.pid, worker.starts
    prefix = f"deltazoo-{xdist_worker_id()}-"
    assert any(node.startswith(prefix) for node in _celery_nodes(stack_server.broker_url))
    worker.kill()
    assert not worker.alive()
    stack_server.restart_worker()
    assert worker.alive() and worker.pid != first_pid and worker.starts == first_starts + 1
    node = f"deltazoo-{xdist_worker_id()}-{worker.starts}@"
    assert any(n.startswith(node) for n in _celery_nodes(stack_server.broker_url))
    assert httpx.get(f"{stack_server.url}/v1/health", timeout=10).status_code == 200
