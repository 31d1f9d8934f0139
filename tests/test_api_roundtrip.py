"""Push a base and a fine-tune through the embedded default (SQLite + local objects + in-process jobs)
and pull every file back bit for bit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deltazoo.api.app import create_app
from deltazoo.registry.settings import Settings
from fastapi.testclient import TestClient

from tests.test_api_support import base_state, checkpoint, finetune_state, push, sha, wait_job


def embedded_settings(home: Path) -> Settings:
    return Settings(home=home, database_url=None, broker_url=None, s3_endpoint=None, auth=False)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as c:
        yield c


@pytest.fixture
def zoo(client: TestClient) -> dict[str, dict[str, bytes]]:
    base = base_state()
    files = {"base": checkpoint(base), "ft": checkpoint(finetune_state(base))}
    job = push(client, "org/base", files["base"])["job"]
    assert wait_job(client, job["id"])["status"] == "succeeded"
    job = push(client, "org/ft", files["ft"], base="org/base@1")["job"]
    assert wait_job(client, job["id"])["status"] == "succeeded"
    return files


def test_pull_is_bit_exact(client: TestClient, zoo: dict[str, dict[str, bytes]]) -> None:
    for model, files in (("org/base", zoo["base"]), ("org/ft", zoo["ft"])):
        for path, data in files.items():
            r = client.get(f"/v1/models/{model}/versions/latest/files/{path}")
            assert r.status_code == 200
            assert sha(r.content) == sha(data)
            assert r.headers["etag"] == f'"{sha(data)}"'
            assert int(r.headers["content-length"]) == len(data)


def test_encodings_stats_and_ratio(client: TestClient, zoo: dict[str, dict[str, bytes]]) -> None:
    detail = client.get("/v1/models/org/ft/versions/1").json()
    assert detail["status"] == "ready" and detail["parent"] == "org/base@1"
    enc = {t["name"]: t["encoding"] for t in detail["tensors"]}
    assert enc["norm.weight"] == "same"
    assert enc["layers.0.q.weight"] == "delta"
    assert enc["embed.weight"] == "delta-rows"
    assert enc["lm_head.weight"] == "plain"
    assert detail["chain"] == ["org/ft@1", "org/base@1"]
    stats = client.get("/v1/stats").json()
    assert stats["logical_bytes"] == sum(len(d) for f in zoo.values() for d in f.values())
    assert 0 < stats["stored_bytes"] < stats["logical_bytes"]
    assert stats["encodings"]["same"] >= 1


def test_lineage(client: TestClient, zoo: dict[str, dict[str, bytes]]) -> None:
    lin = client.get("/v1/models/org/base/lineage").json()
    assert lin["descendants"] == ["org/ft@1"]
    assert {"parent": "org/base@1", "child": "org/ft@1", "relation": "finetune"} in lin["edges"]
    lin = client.get("/v1/models/org/ft/lineage").json()
    assert lin["ancestors"] == ["org/base@1"]


@pytest.mark.parametrize("spec", ["bytes=0-99", "bytes=100-", "bytes=-50", "bytes=5000-5100", "bytes=0-0"])
def test_range_download(client: TestClient, zoo: dict[str, dict[str, bytes]], spec: str) -> None:
    data = zoo["ft"]["model.safetensors"]
    r = client.get("/v1/models/org/ft/versions/1/files/model.safetensors", headers={"Range": spec})
    assert r.status_code == 206
    first, _, last = spec[6:].partition("-")
    start = len(data) - int(last) if first == "" else int(first)
    end = len(data) if (first == "" or last == "") else int(last) + 1
    assert r.content == data[start:end]
    assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{len(data)}"


def test_bad_range_is_416(client: TestClient, zoo: dict[str, dict[str, bytes]]) -> None:
    r = client.get("/v1/models/org/ft/versions/1/files/config.json", headers={"Range": "bytes=999999-"})
    assert r.status_code == 416
    assert r.json()["error"]["code"] == "range_not_satisfiable"
    assert r.headers["content-range"] == f"bytes */{len(zoo['ft']['config.json'])}"
    r = client.get("/org/ft/resolve/main/config.json", headers={"Range": "bytes=999999-"})  # the Hub's shape
    assert r.status_code == 416 and r.headers["content-range"].startswith("bytes */")
    for whole in ("bytes=0-0,2-3", "items=0-1"):  # several ranges, another unit: ignored (RFC 9110 14.2)
        r = client.get("/v1/models/org/ft/versions/1/files/config.json", headers={"Range": whole})
        assert r.status_code == 200 and r.content == zoo["ft"]["config.json"], whole


def test_conditional_downloads(client: TestClient, zoo: dict[str, dict[str, bytes]]) -> None:
    """If-None-Match naming the ETag: 304; If-Range naming another file's ETag: the Range is ignored and
    the whole file comes back (200), so a resumed download never joins bytes of two files."""
    data = zoo["ft"]["model.safetensors"]
    etag = f'"{sha(data)}"'
    for url in (
        "/v1/models/org/ft/versions/1/files/model.safetensors",
        "/org/ft/resolve/main/model.safetensors",
    ):
        r = client.get(url, headers={"If-None-Match": f'"{"0" * 64}", {etag}'})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
        assert client.get(url, headers={"If-None-Match": f'"{"0" * 64}"'}).status_code == 200
        r = client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
        assert r.status_code == 206 and r.content == data[10:20]
        r = client.get(url, headers={"Range": "bytes=10-19", "If-Range": f'"{"0" * 64}"'})
        assert r.status_code == 200 and r.content == data and "content-range" not in r.headers
    blob = next(
        f["header_blob"]
        for f in client.get("/v1/models/org/ft/versions/1/manifest").json()["files"]
        if f["header_blob"]
    )
    whole = client.get(f"/v1/blobs/{blob}")
    r = client.head(f"/v1/blobs/{blob}")  # HEAD: the size and ETag of a stored object, no bytes
    assert (
        r.status_code == 200 and r.content == b"" and r.headers["content-length"] == str(len(whole.content))
    )
    assert client.get(f"/v1/blobs/{blob}", headers={"If-None-Match": f'"{blob}"'}).status_code == 304


def test_unknown_base_is_404(client: TestClient) -> None:
    client.post("/v1/models", json={"name": "org/x"})
    files = checkpoint(base_state())
    body = {
        "base": "org/nothere@1",
        "files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()],
    }
    r = client.post("/v1/models/org/x/versions", json=body)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "base_not_found"


def test_dedup_push_needs_no_upload(client: TestClient, zoo: dict[str, dict[str, bytes]]) -> None:
    answer = push(client, "org/copy", zoo["ft"], base="org/base@1")
    assert all(not u["needed"] for u in answer["uploads"])
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    detail = client.get("/v1/models/org/copy/versions/1").json()
    assert detail["stored_bytes"] == 0
    assert {t["encoding"] for t in detail["tensors"]} == {"same"}
    r = client.get("/v1/models/org/copy/versions/1/files/model.safetensors")
    assert sha(r.content) == sha(zoo["ft"]["model.safetensors"])


def test_unrelated_base_is_refused(client: TestClient, zoo: dict[str, dict[str, bytes]]) -> None:
    import torch
    from safetensors.torch import save

    other = {"totally.different": torch.zeros(4, 4, dtype=torch.bfloat16)}
    r = client.post("/v1/models", json={"name": "org/other"})
    data = save(other)
    body = {
        "base": "org/base@1",
        "files": [{"path": "model.safetensors", "size": len(data), "sha256": sha(data)}],
    }
    rev = client.post("/v1/models/org/other/versions", json=body).json()["version"]["revision"]
    client.put(f"/v1/models/org/other/versions/{rev}/files/model.safetensors", content=data)
    r = client.post(f"/v1/models/org/other/versions/{rev}/commit")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unrelated_base"


def test_delete_base_with_descendant_is_409(client: TestClient, zoo: dict[str, dict[str, bytes]]) -> None:
    r = client.delete("/v1/models/org/base/versions/1")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "has_descendants"
    assert client.delete("/v1/models/org/ft/versions/1").status_code == 204
    assert client.delete("/v1/models/org/base/versions/1").status_code == 204
    assert client.get("/v1/stats").json()["blobs"] == 0


def test_errors_are_json(client: TestClient) -> None:
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.post("/v1/models", json={"name": "no-slash"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_name"
    r = client.post("/v1/models", json={})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.get("/v1/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok", "object_store": "ok"}


def test_head_gives_size_and_etag(client: TestClient, zoo: dict[str, dict[str, bytes]]) -> None:
    data = zoo["ft"]["model.safetensors"]
    r = client.head("/v1/models/org/ft/versions/1/files/model.safetensors")
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == len(data) and r.headers["etag"] == f'"{sha(data)}"'


def test_sharded_checkpoint_finds_parents_in_any_shard(client: TestClient) -> None:
    import json

    from safetensors.torch import save

    base = base_state()
    names = sorted(base)
    shards = {
        "model-00001-of-00002.safetensors": {k: base[k] for k in names[:2]},
        "model-00002-of-00002.safetensors": {k: base[k] for k in names[2:]},
    }
    index = {"metadata": {}, "weight_map": {k: f for f, part in shards.items() for k in part}}
    files = {f: save(part) for f, part in shards.items()}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    assert wait_job(client, push(client, "org/sharded", files)["job"]["id"])["status"] == "succeeded"
    ft = checkpoint(finetune_state(base))  # one file: every parent is in some shard of the base
    assert (
        wait_job(client, push(client, "org/ft1", ft, base="org/sharded@1")["job"]["id"])["status"]
        == "succeeded"
    )
    enc = {t["name"]: t["encoding"] for t in client.get("/v1/models/org/ft1/versions/1").json()["tensors"]}
    assert enc["layers.0.q.weight"] == "delta" and enc["layers.0.v.weight"] == "delta"
    for model, checkpoint_files in (("org/sharded", files), ("org/ft1", ft)):
        for path, data in checkpoint_files.items():
            assert sha(client.get(f"/v1/models/{model}/versions/1/files/{path}").content) == sha(data)


def test_list_and_search_models(client: TestClient, zoo: dict[str, dict[str, bytes]]) -> None:
    listed = client.get("/v1/models").json()
    assert listed["total"] == 2 and [m["name"] for m in listed["items"]] == ["org/base", "org/ft"]
    ft = listed["items"][1]
    assert ft["versions"] == 1 and ft["latest_revision"] == 1 and ft["ratio"] > 1
    assert [m["name"] for m in client.get("/v1/models", params={"search": "FT"}).json()["items"]] == [
        "org/ft"
    ]
    page = client.get("/v1/models", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 2 and [m["name"] for m in page["items"]] == ["org/ft"]
    model = client.get("/v1/models/org/ft").json()
    assert [v["ref"] for v in model["versions"]] == ["org/ft@1"]
    assert client.get("/v1/models/org/none").json()["error"]["code"] == "model_not_found"
    assert client.get("/v1/models/org/ft/versions/7").json()["error"]["code"] == "version_not_found"
    r = client.post("/v1/models", json={"name": "org/ft"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_exists"
    assert client.post("/v1/models", json={"name": "org/ft", "exist_ok": True}).status_code == 200
