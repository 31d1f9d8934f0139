"""A model's settings after it is created (``PATCH /v1/models/{org}/{name}``, ``deltazoo edit``, the Hub's
``update_repo_settings``): description and visibility. Making a model private keeps every rule a
private model keeps from its first push: nobody else reads it, no public model (or model of another
namespace) builds on it, and no copy elsewhere links to its bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient

from tests.test_api_private import ADMIN, bearer, new_token
from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, finetune_state, push, wait_job


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """A server with auth on, on each database (the change locks the model row: Postgres takes it)."""
    settings = embedded_settings(tmp_path / "home").model_copy(update={"auth": True, "admin_token": ADMIN})
    if request.param == "postgres":
        settings = settings.model_copy(update={"database_url": request.getfixturevalue("empty_postgres_url")})
    with TestClient(create_app(settings)) as client:
        yield client


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def pushed(api: TestClient, name: str, files: dict[str, bytes], base: str | None = None) -> dict:
    answer = push(api, name, files, base=base)
    assert wait_job(api, answer["job"]["id"])["status"] == "succeeded"
    return answer


def test_a_model_made_private_is_gone_for_others_and_back_when_made_public(api: TestClient) -> None:
    acme_rw = new_token(api, "acme", ["read", "write"])
    acme_r = new_token(api, "acme", ["read"])
    other_rw = new_token(api, "other", ["read", "write"])
    pushed(TestClient(api.app, headers=bearer(acme_rw)), "acme/base", checkpoint(base_state(seed=3)))
    assert api.get("/v1/models/acme/base").json()["private"] is False

    assert api.patch("/v1/models/acme/base", json={"private": True}).status_code == 401
    for token, status in ((acme_r, 403), (other_rw, 403)):
        r = api.patch("/v1/models/acme/base", json={"private": True}, headers=bearer(token))
        assert r.status_code == status, r.text
    r = api.patch("/v1/models/acme/base", json={"private": True}, headers=bearer(acme_rw))
    assert r.status_code == 200 and r.json()["private"] is True, r.text

    for headers in ({}, bearer(other_rw)):  # like a missing model, everywhere
        assert api.get("/v1/models/acme/base", headers=headers).status_code == 404
        assert api.get("/v1/models/acme/base/versions/1", headers=headers).status_code == 404
        assert "acme/base" not in str(api.get("/v1/models", headers=headers).json())
        assert api.get("/api/models/acme/base", headers=headers).status_code in (401, 404)
        r = api.patch("/v1/models/acme/base", json={"private": False}, headers=headers)
        assert r.status_code == (403 if headers else 401)  # as for a missing model: nothing told
    assert api.get("/v1/stats").json()["models"] == 0  # an outsider's numbers leave it out
    assert api.get("/v1/stats", headers=bearer(ADMIN)).json()["models"] == 1
    assert api.get("/v1/models/acme/base", headers=bearer(acme_r)).status_code == 200

    r = api.patch("/v1/models/acme/base", json={"description": "the base"}, headers=bearer(acme_rw))
    assert r.json()["private"] is True and r.json()["description"] == "the base"  # only what is given
    r = api.patch("/v1/models/acme/base", json={"private": False}, headers=bearer(acme_rw))
    assert r.status_code == 200 and r.json()["private"] is False and r.json()["description"] == "the base"
    assert api.get("/v1/models/acme/base").status_code == 200
    for bad in ({"private": "yes"}, {"owner": "me"}, {"description": "x" * 10_001}):
        r = api.patch("/v1/models/acme/base", json=bad, headers=bearer(acme_rw))
        assert r.status_code == 422, (bad, r.text)


def test_making_a_model_private_is_refused_while_a_public_model_builds_on_it(api: TestClient) -> None:
    acme = TestClient(api.app, headers=bearer(new_token(api, "acme", ["read", "write"])))
    other = TestClient(api.app, headers=bearer(new_token(api, "other", ["read", "write"])))
    base = base_state(seed=3)
    pushed(acme, "acme/base", checkpoint(base))
    acme.post("/v1/models", json={"name": "acme/private-ft", "private": True})
    pushed(acme, "acme/private-ft", checkpoint(finetune_state(base, seed=1)), base="acme/base@1")
    r = acme.patch("/v1/models/acme/base", json={"private": True})
    assert r.status_code == 200, r.text  # a private fine-tune of its own namespace may build on it
    acme.patch("/v1/models/acme/base", json={"private": False})

    pushed(other, "other/ft", checkpoint(finetune_state(base, seed=2)), base="acme/base@1")
    r = acme.patch("/v1/models/acme/base", json={"private": True})
    assert r.status_code == 409 and r.json()["error"]["code"] == "has_public_descendants", r.text
    assert "other/ft@1" in r.json()["error"]["message"]
    assert api.get("/v1/models/acme/base").json()["private"] is False  # nothing changed
    assert api.get("/v1/models/acme/base/lineage").json()["descendants"] == ["other/ft@1"]
    other.patch("/v1/models/other/ft", json={"private": True})  # private, but another namespace's
    lineage = api.get("/v1/models/acme/base/lineage").json()  # anonymous: counted nowhere now
    assert lineage["descendants"] == [] and lineage["descendants_total"] == 0
    assert api.get("/v1/models/acme/base/lineage", headers=bearer(ADMIN)).json()["descendants_total"] == 2
    r = acme.patch("/v1/models/acme/base", json={"private": True})
    assert r.status_code == 409 and "other/ft" not in r.json()["error"]["message"]  # not named to acme
    assert "1 version(s) of models this token cannot read" in r.json()["error"]["message"]
    assert other.delete("/v1/models/other/ft").status_code == 204
    assert acme.patch("/v1/models/acme/base", json={"private": True}).status_code == 200


def test_copies_elsewhere_get_their_own_bytes_when_a_model_goes_private(api: TestClient) -> None:
    """Another namespace pushed the same weights (deduplicated: its tensors link to acme's). Once acme's
    model is private those links would show acme's bytes through a model others read: they are given
    bytes of their own, exactly, and the same weights pushed again are uploaded, not deduplicated."""
    acme = TestClient(api.app, headers=bearer(new_token(api, "acme", ["read", "write"])))
    other = TestClient(api.app, headers=bearer(new_token(api, "other", ["read", "write"])))
    files = checkpoint(base_state(seed=5))
    pushed(acme, "acme/base", files)
    answer = pushed(other, "other/copy", files)
    assert answer["uploads"] == [{"path": p, "needed": False} for p in files]  # deduplicated
    tensors = other.get("/v1/models/other/copy/versions/1").json()["tensors"]
    assert {t["encoding"] for t in tensors} == {"same"} and "acme/base" in str(tensors)

    assert acme.patch("/v1/models/acme/base", json={"private": True}).status_code == 200
    tensors = other.get("/v1/models/other/copy/versions/1").json()["tensors"]
    assert "same" not in {t["encoding"] for t in tensors} and "acme" not in str(tensors)
    assert all(t["parent"] is None for t in tensors)
    for path, data in files.items():
        for client, name in ((other, "other/copy"), (acme, "acme/base")):
            got = client.get(f"/v1/models/{name}/versions/1/files/{path}")
            assert got.status_code == 200 and hashlib.sha256(got.content).digest() == sha256(data)
    pushed(other, "other/again", files)  # deduplicated against other's own copy, never against acme
    tensors = other.get("/v1/models/other/again/versions/1").json()["tensors"]
    assert "acme" not in str(tensors) and all(t["parent"].startswith("other/copy@1:") for t in tensors)


def test_cli_edit_changes_a_model(env: str, unique_org: str, tmp_path, capsys) -> None:  # noqa: ANN001
    from deltazoo import Client
    from tests.cli_support import run_cli
    from tests.test_api_support import write_dir

    name = f"{unique_org}/base"
    with Client(env) as client:
        client.push(write_dir(tmp_path / "base", checkpoint(base_state(seed=7))), name, quiet=True)
    code, out, _ = run_cli(capsys, "edit", name, "--private", "--description", "kept close")
    assert code == 0 and out.strip() == f"{name}: private; description: kept close"
    code, out, _ = run_cli(capsys, "edit", name, "--public", "--json")
    assert code == 0 and '"private": false' in out and "kept close" in out
    code, _, err = run_cli(capsys, "edit", name)
    assert code == 2 and "nothing to change" in err
    code, _, err = run_cli(capsys, "edit", f"{name}@1", "--private")
    assert code == 2 and "ORG/NAME" in err
    with Client(env) as client:
        assert client.update_model(name, private=True).private is True
        assert client.model_info(name).private is True
