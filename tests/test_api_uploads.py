"""Bad uploads through the API: a 4xx naming the problem, nothing half-stored, earlier versions intact."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, push, sha, wait_job


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, Path, dict[str, bytes]]]:
    home = tmp_path / "home"
    with TestClient(create_app(embedded_settings(home))) as client:
        files = checkpoint(base_state())
        job = push(client, "org/m", files)["job"]
        assert wait_job(client, job["id"])["status"] == "succeeded"
        yield client, home, files


def corrupt(kind: str, good: bytes) -> bytes:
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])
    data = good[8 + n :]
    names = sorted(k for k in header if k != "__metadata__")
    first = header[names[0]]
    if kind == "oversize_header":
        return struct.pack("<Q", 200 << 20) + good[8:]
    if kind == "bad_json":
        return struct.pack("<Q", n) + b"{" * n + data
    if kind == "truncated":
        return good[:-10]
    if kind == "unknown_dtype":
        first["dtype"] = "F12"
    elif kind == "shape_mismatch":
        first["shape"] = [first["shape"][0] + 1, *first["shape"][1:]]
    elif kind == "overlap":
        b, e = header[names[1]]["data_offsets"]
        header[names[1]]["data_offsets"] = [b - 2, e - 2]
    elif kind == "gap":
        header[names[0]]["data_offsets"] = [o + 2 for o in first["data_offsets"]]
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def objects(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in (home / "objects").rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "kind", ["oversize_header", "bad_json", "truncated", "unknown_dtype", "shape_mismatch", "overlap", "gap"]
)
def test_malformed_safetensors_is_rejected_cleanly(
    env: tuple[TestClient, Path, dict[str, bytes]], kind: str
) -> None:
    client, home, files = env
    bad = corrupt(kind, files["model.safetensors"])
    before = objects(home)
    body = {"files": [{"path": "model.safetensors", "size": len(bad), "sha256": sha(bad)}]}
    rev = client.post("/v1/models/org/m/versions", json=body).json()["version"]["revision"]
    r = client.put(f"/v1/models/org/m/versions/{rev}/files/model.safetensors", content=bad)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_safetensors" and error["message"].startswith("model.safetensors: ")
    assert objects(home) == before  # no staging object left behind
    r = client.post(f"/v1/models/org/m/versions/{rev}/commit")
    assert r.status_code == 400 and r.json()["error"]["code"] == "files_missing"
    for path, data in files.items():
        assert sha(client.get(f"/v1/models/org/m/versions/1/files/{path}").content) == sha(data)


def test_sha_and_size_mismatch(env: tuple[TestClient, Path, dict[str, bytes]]) -> None:
    client, home, files = env
    data = files["config.json"] + b" "
    body = {"files": [{"path": "config.json", "size": len(data), "sha256": sha(files["config.json"])}]}
    rev = client.post("/v1/models/org/m/versions", json=body).json()["version"]["revision"]
    before = objects(home)
    r = client.put(f"/v1/models/org/m/versions/{rev}/files/config.json", content=data)
    assert r.status_code == 400 and r.json()["error"]["code"] == "sha256_mismatch"
    r = client.put(f"/v1/models/org/m/versions/{rev}/files/config.json", content=data + b"x")
    assert r.status_code == 400 and r.json()["error"]["code"] == "size_mismatch"
    assert objects(home) == before


def test_upload_after_commit_and_undeclared_file(env: tuple[TestClient, Path, dict[str, bytes]]) -> None:
    client, _, files = env
    r = client.put("/v1/models/org/m/versions/1/files/config.json", content=files["config.json"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_not_pending"
    body = {"files": [{"path": "a.json", "size": 2, "sha256": sha(b"{}")}]}
    rev = client.post("/v1/models/org/m/versions", json=body).json()["version"]["revision"]
    r = client.put(f"/v1/models/org/m/versions/{rev}/files/b.json", content=b"{}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_declared"


@pytest.mark.parametrize("path", ["../x", "/abs", "a//b", "a/./b"])
def test_bad_paths_are_422(env: tuple[TestClient, Path, dict[str, bytes]], path: str) -> None:
    client, _, _ = env
    body = {"files": [{"path": path, "size": 2, "sha256": sha(b"{}")}]}
    r = client.post("/v1/models/org/m/versions", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_path"


def test_bad_relation_and_profile_are_422(env: tuple[TestClient, Path, dict[str, bytes]]) -> None:
    client, _, files = env
    decl = [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]
    r = client.post("/v1/models/org/m/versions", json={"files": decl, "relation": "cousin"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_relation"
    r = client.post("/v1/models/org/m/versions", json={"files": decl, "profiles": ["deltadq:n=banana"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_profile"


def test_bad_index_file_is_rejected(env: tuple[TestClient, Path, dict[str, bytes]]) -> None:
    client, _, _ = env
    bad = b'{"weight_map": {"a": 1}}'
    body = {"files": [{"path": "model.safetensors.index.json", "size": len(bad), "sha256": sha(bad)}]}
    rev = client.post("/v1/models/org/m/versions", json=body).json()["version"]["revision"]
    r = client.put(f"/v1/models/org/m/versions/{rev}/files/model.safetensors.index.json", content=bad)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_index"


def test_upload_without_content_length_is_411(env: tuple[TestClient, Path, dict[str, bytes]]) -> None:
    client, _, files = env
    data = files["config.json"]
    body = {"files": [{"path": "c.json", "size": len(data), "sha256": sha(data)}]}
    rev = client.post("/v1/models/org/m/versions", json=body).json()["version"]["revision"]
    r = client.put(f"/v1/models/org/m/versions/{rev}/files/c.json", content=iter([data]))
    assert r.status_code == 411 and r.json()["error"]["code"] == "length_required"
