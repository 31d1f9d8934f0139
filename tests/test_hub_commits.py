"""Hub commits (NDJSON, the route huggingface_hub's upload_folder uses) against the embedded server: a
refused commit leaves no version behind, and commits sent in a row (upload_folder splits a large folder
into several) each build on the one before, even while it is still being encoded."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import checkpoint, sha

HEADER = {"key": "header", "value": {"summary": "s", "description": ""}}


def inline(path: str, data: bytes) -> dict:
    content = base64.b64encode(data).decode()
    return {"key": "file", "value": {"content": content, "path": path, "encoding": "base64"}}


def ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as c:
        assert c.post("/api/repos/create", json={"name": "m", "organization": "hub"}).status_code == 200
        yield c


def test_a_refused_commit_leaves_no_version(client: TestClient) -> None:
    weights = checkpoint({"w": torch.ones(4)})["model.safetensors"]
    never_sent = {"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": "a" * 64, "size": 3}}
    index = inline("model.safetensors.index.json", b'{"weight_map": {"w": "o.safetensors"}}')
    refusals = [
        (ndjson(HEADER, inline("model.safetensors", b"\0" * 3)), 400),  # not a safetensors file
        (ndjson(HEADER, never_sent), 409),
        (ndjson(HEADER, index, inline("model.safetensors", weights)), 422),  # index names an unsent shard
    ]
    for body, status in refusals:
        r = client.post("/api/models/hub/m/commit/main", content=body)
        assert r.status_code == status, r.text
        assert "error" in r.json() and r.headers["X-Error-Message"]
    header = {"key": "header", "value": {"summary": "s", "parentCommit": "zz"}}
    r = client.post("/api/models/hub/m/commit/main", content=ndjson(header, inline("a.txt", b"a")))
    assert r.status_code == 400 and r.json()["code"] == "invalid_parent_commit"
    assert client.get("/v1/models/hub/m").json()["versions"] == []
    assert [p for p in client.get("/v1/pending").json()["items"] if p["ref"].startswith("hub/")] == []


def test_commits_in_a_row_build_on_each_other_while_encoding(client: TestClient) -> None:
    files = {
        "config.json": b"{}",
        "model.safetensors": checkpoint({"w": torch.randn(1024, 1024)})["model.safetensors"],  # takes a while
        "tokenizer.json": b'{"t": 1}',
    }
    revisions = []
    for path, data in files.items():  # one commit a file, each sent as soon as the one before answered
        r = client.post("/api/models/hub/m/commit/main", content=ndjson(HEADER, inline(path, data)))
        assert r.status_code == 200, r.text
        revisions.append(r.json()["revision"])
    assert revisions == [1, 2, 3]
    deadline = time.monotonic() + 60
    while (detail := client.get("/v1/models/hub/m/versions/3").json())["status"] != "ready":
        assert detail["status"] == "processing" and time.monotonic() < deadline, detail
        time.sleep(0.05)
    assert sorted(f["path"] for f in detail["files"]) == sorted(files)
    for path, data in files.items():
        assert sha(client.get(f"/hub/m/resolve/main/{path}").content) == sha(data)
