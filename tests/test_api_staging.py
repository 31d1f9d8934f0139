"""Uploads of versions never committed are removed after DELTAZOO_STAGING_EXPIRY_HOURS (here 0)."""

from __future__ import annotations

from pathlib import Path

from deltazoo.api.app import create_app
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import push, sha, wait_job


def staged_objects(home: Path) -> list[Path]:
    root = home / "objects" / "staging"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def start_abandoned_upload(client: TestClient, name: str, data: bytes) -> int:
    client.post("/v1/models", json={"name": name, "exist_ok": True})
    body = {"files": [{"path": "notes.txt", "size": len(data), "sha256": sha(data)}]}
    rev = int(client.post(f"/v1/models/{name}/versions", json=body).json()["version"]["revision"])
    r = client.put(f"/v1/models/{name}/versions/{rev}/files/notes.txt", content=data)
    assert r.status_code == 200, r.text
    return rev


def test_expired_uncommitted_versions_are_swept_on_commit_and_on_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = embedded_settings(home).model_copy(update={"staging_expiry_hours": 0.0})
    with TestClient(create_app(settings)) as client:
        rev = start_abandoned_upload(client, "org/left", b"never committed")
        assert len(staged_objects(home)) == 1
        job = push(client, "org/done", {"notes.txt": b"committed"})["job"]
        assert wait_job(client, job["id"])["status"] == "succeeded"
        r = client.get(f"/v1/models/org/left/versions/{rev}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"
        assert staged_objects(home) == []
        assert client.get("/v1/models/org/done/versions/1").json()["status"] == "ready"
        start_abandoned_upload(client, "org/left", b"abandoned again")
    with TestClient(create_app(settings)) as client:  # a restart sweeps too
        assert client.get("/v1/models/org/left").json()["versions"] == []
        assert staged_objects(home) == []


def test_fresh_uploads_survive_the_sweep(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with TestClient(create_app(embedded_settings(home))) as client:  # default expiry: 24 h
        rev = start_abandoned_upload(client, "org/slow", b"still uploading")
        assert (
            wait_job(client, push(client, "org/other", {"a.txt": b"x"})["job"]["id"])["status"] == "succeeded"
        )
        assert client.get(f"/v1/models/org/slow/versions/{rev}").json()["status"] == "pending"
        assert len(staged_objects(home)) == 1
