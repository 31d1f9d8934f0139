"""Named revisions: tags created, moved and deleted (REST), and every kind of revision (number, latest,
main, commit id, tag) accepted wherever one is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, finetune_state, push, wait_job


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as c:
        yield c


@pytest.fixture
def two_versions(client: TestClient) -> list[dict]:
    base = base_state()
    out = []
    for files in (checkpoint(base), checkpoint(finetune_state(base))):
        job = push(client, "acme/ft", files)["job"]
        assert wait_job(client, job["id"])["status"] == "succeeded"
        out.append(client.get(f"/v1/models/acme/ft/versions/{len(out) + 1}").json())
    return out


def test_tags_are_created_moved_listed_and_deleted(client: TestClient, two_versions: list[dict]) -> None:
    v1, v2 = two_versions
    assert len(v1["commit_id"]) == 40 and v1["commit_id"] != v2["commit_id"] and v1["tags"] == []
    r = client.put("/v1/models/acme/ft/tags/prod", json={"revision": "1"})
    assert r.status_code == 201 and r.json()["version"] == "acme/ft@1" and r.json()["ref"] == "acme/ft@prod"
    assert client.get("/v1/models/acme/ft/versions/prod").json()["revision"] == 1
    assert client.get("/v1/models/acme/ft/versions/1").json()["tags"] == ["prod"]
    r = client.put("/v1/models/acme/ft/tags/prod", json={"revision": v2["commit_id"]})  # moved
    assert r.status_code == 200 and r.json()["revision"] == 2
    assert client.get("/v1/models/acme/ft/versions/prod").json()["revision"] == 2
    r = client.put("/v1/models/acme/ft/tags/v1.2", json={"revision": "prod"})  # a tag from a tag
    assert r.status_code == 201 and r.json()["revision"] == 2
    items = client.get("/v1/models/acme/ft/tags").json()["items"]
    assert [(t["name"], t["revision"]) for t in items] == [("prod", 2), ("v1.2", 2)]
    assert client.get("/v1/models/acme/ft").json()["versions"][1]["tags"] == ["prod", "v1.2"]
    assert client.delete("/v1/models/acme/ft/tags/prod").status_code == 204
    r = client.get("/v1/models/acme/ft/versions/prod")
    assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"
    r = client.delete("/v1/models/acme/ft/tags/prod")
    assert r.status_code == 404 and r.json()["error"]["code"] == "tag_not_found"
    assert client.get("/v1/models/acme/ft/versions/2").json()["tags"] == ["v1.2"]


def test_every_kind_of_revision_names_a_version(client: TestClient, two_versions: list[dict]) -> None:
    v1, v2 = two_versions
    client.put("/v1/models/acme/ft/tags/stable", json={"revision": "1"})
    for rev, expected in [("1", 1), ("latest", 2), ("main", 2), (v1["commit_id"], 1), ("stable", 1)]:
        r = client.get(f"/v1/models/acme/ft/versions/{rev}/files/config.json")
        assert r.status_code == 200, (rev, r.text)
        assert client.get(f"/v1/models/acme/ft/versions/{rev}").json()["revision"] == expected, rev
    r = client.get("/v1/models/acme/ft/versions/stable/files/model.safetensors")
    assert r.status_code == 200 and r.headers["etag"] == f'"{v1["files"][1]["sha256"]}"'
    r = client.get("/v1/models/acme/ft/versions/" + "a" * 40)
    assert r.status_code == 404 and "commit id" in r.json()["error"]["message"]
    base = push(client, "acme/child", checkpoint(base_state()), base="acme/ft@stable")  # a base by tag
    assert base["version"]["parent"] == "acme/ft@1"


def test_bad_tags_are_refused_and_a_deleted_version_takes_its_tags(
    client: TestClient, two_versions: list[dict]
) -> None:
    for bad in ("main", "latest", "12", "a" * 40, "-x", "x" * 101):
        r = client.put(f"/v1/models/acme/ft/tags/{bad}", json={"revision": "1"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_tag", bad
    r = client.put("/v1/models/acme/ft/tags/prod", json={"revision": "9"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"
    r = client.put("/v1/models/acme/ft/tags/prod", json={"revision": ""})
    assert r.status_code == 422
    r = client.put("/v1/models/acme/nope/tags/prod", json={"revision": "1"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert client.put("/v1/models/acme/ft/tags/old", json={"revision": "2"}).status_code == 201
    assert client.delete("/v1/models/acme/ft/versions/2").status_code == 204
    assert client.get("/v1/models/acme/ft/tags").json()["items"] == []
    assert client.get("/v1/models/acme/ft/versions/main").json()["revision"] == 1


def test_the_web_pages_show_commit_ids_and_tags(client: TestClient, two_versions: list[dict]) -> None:
    client.put("/v1/models/acme/ft/tags/prod", json={"revision": "1"})
    page = client.get("/models/acme/ft")
    assert page.status_code == 200 and '<span class="tag">prod</span>' in page.text
    page = client.get("/models/acme/ft/prod")  # a page by tag
    assert page.status_code == 200 and two_versions[0]["commit_id"] in page.text and "acme/ft@1" in page.text
