"""Races, bursts and upload limits on real Postgres and on the embedded default (SQLite): concurrent
requests released together at a barrier answer 2xx, 409 or 503, never 500, and nothing is lost or
doubled; uploads over the configured tensor limits are a clear 413/422 that stores nothing new."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from deltazoo.api.app import create_app
from deltazoo.registry.settings import Settings
from fastapi.testclient import TestClient
from safetensors.torch import save

from tests.test_api_support import CONFIG, sha, wait_job

THREADS = 8


@contextmanager
def app_on_backend(request: pytest.FixtureRequest, tmp_path: Path, **settings: Any) -> Iterator[TestClient]:
    """The app in process on the backend ``request.param`` names (``sqlite``: the embedded default,
    ``postgres``: an empty database), with ``settings``; a 500 is answered, not raised, so a test sees
    what a client would."""
    url = request.getfixturevalue("empty_postgres_url") if request.param == "postgres" else None
    app = create_app(
        Settings(home=tmp_path / "home", database_url=url, broker_url=None, s3_endpoint=None, **settings)
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with app_on_backend(request, tmp_path, auth=False, max_tensor_mb=1, max_tensors=4) as client:
        yield client


def at_barrier(n: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """``call(i)`` for i in range(n) in n threads released together."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = call(i)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not any(isinstance(r, Exception) for r in out), out
    return out


def codes(answers: list[httpx.Response]) -> list[int]:
    return sorted(r.status_code for r in answers)


def declare(api: TestClient, name: str, files: dict[str, bytes]) -> int:
    body = {"files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]}
    r = api.post(f"/v1/models/{name}/versions", json=body)
    assert r.status_code == 201, r.text
    rev = int(r.json()["version"]["revision"])
    for path, data in files.items():
        r = api.put(f"/v1/models/{name}/versions/{rev}/files/{path}", content=data)
        assert r.status_code == 200, r.text
    return rev


def small_checkpoint(seed: int) -> dict[str, bytes]:
    g = torch.Generator().manual_seed(seed)
    return {"model.safetensors": save({"w": torch.randn(16, 16, generator=g)}), "config.json": CONFIG}


def test_concurrent_creates_of_one_name_make_one_model(api: TestClient) -> None:
    answers = at_barrier(THREADS, lambda i: api.post("/v1/models", json={"name": "race/m"}))
    assert 500 not in codes(answers), [r.text for r in answers]
    assert codes(answers).count(201) == 1 and set(codes(answers)) <= {201, 409, 503}, codes(answers)
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} <= {"model_exists"}
    answers = at_barrier(THREADS, lambda i: api.post("/v1/models", json={"name": "race/n", "exist_ok": True}))
    assert set(codes(answers)) <= {200, 201, 503} and codes(answers).count(201) == 1, codes(answers)
    names = [m["name"] for m in api.get("/v1/models").json()["items"]]
    assert names == ["race/m", "race/n"]


def test_concurrent_versions_get_distinct_revisions(api: TestClient) -> None:
    """Pushes to one model at once (CI jobs, a sweep of fine-tunes): each takes the next free revision;
    none is refused because another took the revision it first looked at."""
    api.post("/v1/models", json={"name": "race/v"})
    files = [{"path": "config.json", "size": len(CONFIG), "sha256": sha(CONFIG)}]
    body = {"files": files, "resume": False}
    answers = at_barrier(THREADS, lambda i: api.post("/v1/models/race/v/versions", json=body))
    assert set(codes(answers)) <= {201, 503}, [r.text for r in answers]
    made = [r.json()["version"]["revision"] for r in answers if r.status_code == 201]
    assert made and len(made) == len(set(made))  # no revision handed out twice
    listed = [v["revision"] for v in api.get("/v1/models/race/v").json()["versions"]]
    assert sorted(listed) == sorted(made)


def test_a_version_commits_once(api: TestClient) -> None:
    api.post("/v1/models", json={"name": "race/c"})
    files = small_checkpoint(1)
    rev = declare(api, "race/c", files)
    answers = at_barrier(4, lambda i: api.post(f"/v1/models/race/c/versions/{rev}/commit"))
    assert codes(answers).count(202) == 1, [r.text for r in answers]
    assert set(codes(answers)) <= {202, 409, 503}, [r.text for r in answers]
    refused = [r.json()["error"]["code"] for r in answers if r.status_code != 202]
    assert set(refused) <= {"version_not_pending", "unavailable"}, refused
    job = next(r.json()["job"] for r in answers if r.status_code == 202)
    assert wait_job(api, job["id"])["status"] == "succeeded"
    assert api.get(f"/v1/jobs/{job['id'] + 1}").status_code == 404  # no second encode job was queued
    r = api.get(f"/v1/models/race/c/versions/{rev}/files/model.safetensors")
    assert r.status_code == 200 and r.content == files["model.safetensors"]


def test_health_answers_while_a_burst_holds_the_database(api: TestClient) -> None:
    api.post("/v1/models", json={"name": "race/b"})
    answers = at_barrier(
        THREADS * 3, lambda i: api.get("/v1/health") if i % 3 == 0 else api.get("/v1/models")
    )
    assert set(codes(answers)) <= {200, 503}, [r.text for r in answers if r.status_code not in (200, 503)]
    for r in answers:
        if r.status_code == 503:
            assert r.headers.get("Retry-After")


def test_a_tensor_over_the_size_limit_is_413_and_nothing_is_queued(api: TestClient) -> None:
    api.post("/v1/models", json={"name": "lim/big"})
    files = {"model.safetensors": save({"w": torch.zeros(1024, 1024)}), "config.json": CONFIG}  # 4 MiB
    rev = declare(api, "lim/big", files)
    r = api.post(f"/v1/models/lim/big/versions/{rev}/commit")
    assert r.status_code == 413 and r.json()["error"]["code"] == "tensor_too_large", r.text
    assert "'w'" in r.json()["error"]["message"] and "DELTAZOO_MAX_TENSOR_MB" in r.json()["error"]["message"]
    assert api.get(f"/v1/models/lim/big/versions/{rev}").json()["status"] == "pending"


def test_too_many_tensors_is_422(api: TestClient) -> None:
    api.post("/v1/models", json={"name": "lim/many"})
    one_file = save({f"t{i}": torch.zeros(2) for i in range(5)})
    r = api.post(
        "/v1/models/lim/many/versions",
        json={"files": [{"path": "model.safetensors", "size": len(one_file), "sha256": sha(one_file)}]},
    )
    rev = int(r.json()["version"]["revision"])
    r = api.put(f"/v1/models/lim/many/versions/{rev}/files/model.safetensors", content=one_file)
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_tensors", r.text  # at its header
    assert "DELTAZOO_MAX_TENSORS" in r.json()["error"]["message"]
    api.delete(f"/v1/models/lim/many/versions/{rev}")
    shards = {
        "model-00001-of-00002.safetensors": save({f"a{i}": torch.zeros(2) for i in range(3)}),
        "model-00002-of-00002.safetensors": save({f"b{i}": torch.zeros(2) for i in range(3)}),
    }
    rev = declare(api, "lim/many", {**shards, "config.json": CONFIG})  # each file within the limit
    r = api.post(f"/v1/models/lim/many/versions/{rev}/commit")
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_tensors", r.text  # together not
    assert api.get(f"/v1/models/lim/many/versions/{rev}").json()["status"] == "pending"
    ok = {f"t{i}": torch.zeros(2) for i in range(4)}
    rev = declare(api, "lim/many", {"model.safetensors": save(ok), "config.json": CONFIG})
    assert api.post(f"/v1/models/lim/many/versions/{rev}/commit").status_code == 202
