"""No private name through dedup, jobs, rankings, stats or errors; no other namespace's copy pins a model.

Auth on, tokens per namespace (embedded default). Each test names what a caller who cannot read a
private model must never see, through every route and page that could show it, and checks that
deleting your own model is never blocked by another namespace's copy while that copy stays exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient

from tests.test_api_private import ADMIN, bearer, new_token
from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, finetune_state, push, sha, wait_job


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = embedded_settings(tmp_path / "home").model_copy(update={"auth": True, "admin_token": ADMIN})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def pushed(api: TestClient, token: str, name: str, files: dict[str, bytes], **kw: object) -> None:
    api.headers.update(bearer(token))
    job = push(api, name, files, **kw)["job"]  # type: ignore[arg-type]
    assert wait_job(api, job["id"])["status"] == "succeeded"


def create(api: TestClient, token: str, name: str, private: bool) -> None:
    r = api.post("/v1/models", json={"name": name, "private": private}, headers=bearer(token))
    assert r.status_code == 201, r.text


def assert_exact(api: TestClient, token: str, name: str, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        r = api.get(f"/v1/models/{name}/versions/1/files/{path}", headers=bearer(token))
        assert r.status_code == 200 and sha(r.content) == sha(data), (name, path, r.status_code)


def views_of(api: TestClient, name: str, headers: dict[str, str]) -> list[str]:
    """Every answer that shows a version: detail, manifest, model detail, model and version pages."""
    out = []
    for path in (
        f"/v1/models/{name}/versions/1",
        f"/v1/models/{name}/versions/1/manifest",
        f"/v1/models/{name}",
        f"/models/{name}",
        f"/models/{name}/1",
    ):
        r = api.get(path, headers=headers)
        assert r.status_code == 200, (path, r.text)
        out.append(r.text)
    return out


def test_a_tensor_equal_to_a_private_one_neither_names_nor_pins_it(api: TestClient) -> None:
    acme = new_token(api, "acme", ["read", "write"])
    prober = new_token(api, "other", ["read", "write"])
    secret = base_state(seed=21)
    create(api, acme, "acme/secret", private=True)
    pushed(api, acme, "acme/secret", checkpoint(secret))
    probe = checkpoint({**secret, "probe.extra": torch.ones(4, dtype=torch.bfloat16)})
    create(api, prober, "other/probe", private=False)
    pushed(api, prober, "other/probe", probe)

    for headers in ({}, bearer(prober)):  # anonymous and the prober: no trace of acme/secret anywhere
        for text in views_of(api, "other/probe", headers):
            assert "acme" not in text and "secret" not in text
    detail = api.get("/v1/models/other/probe/versions/1", headers=bearer(prober)).json()
    assert all(t["encoding"] != "same" for t in detail["tensors"])  # nothing of acme's was reused

    r = api.delete("/v1/models/acme/secret", headers=bearer(acme))
    assert r.status_code == 204, r.text
    assert_exact(api, prober, "other/probe", probe)


def test_another_namespace_copy_of_a_public_model_does_not_block_its_delete(api: TestClient) -> None:
    acme = new_token(api, "acme", ["read", "write"])
    other = new_token(api, "other", ["read", "write"])
    base = base_state(seed=22)
    v1, v2 = checkpoint(base), checkpoint(finetune_state(base, seed=23))
    create(api, acme, "acme/fam", private=False)
    pushed(api, acme, "acme/fam", v1)
    pushed(api, acme, "acme/fam", v2, base="acme/fam@1")  # deltas, delta-rows, a `same` inside the model
    create(api, other, "other/copy", private=True)
    api.headers.update(bearer(other))
    answer = push(api, "other/copy", v2)  # every file deduplicated against acme/fam@2
    assert all(not u["needed"] for u in answer["uploads"])
    assert wait_job(api, answer["job"]["id"])["status"] == "succeeded"
    copied = api.get("/v1/models/other/copy/versions/1", headers=bearer(other)).json()
    assert {t["encoding"] for t in copied["tensors"]} == {"same"}

    r = api.delete("/v1/models/acme/fam", headers=bearer(acme))
    assert r.status_code == 204, r.text
    assert_exact(api, other, "other/copy", v2)  # the copy kept its bytes, bit for bit
    detail = api.get("/v1/models/other/copy/versions/1", headers=bearer(other)).json()
    assert all(t["parent"] is None for t in detail["tensors"]) and "acme" not in str(detail["tensors"])
    assert detail["stored_bytes"] > 0
    r = api.delete("/v1/models/other/copy", headers=bearer(other))
    assert r.status_code == 204
    stats = api.get("/v1/stats", headers=bearer(ADMIN)).json()
    assert stats["blobs"] == 0 and stats["stored_bytes"] == 0  # every reference was counted once


def test_a_refused_delete_names_no_private_dependent(api: TestClient) -> None:
    acme = new_token(api, "acme", ["read", "write"])
    other = new_token(api, "other", ["read", "write"])
    base = base_state(seed=24)
    create(api, acme, "acme/base", private=False)
    pushed(api, acme, "acme/base", checkpoint(base))
    create(api, other, "other/hidden-ft", private=True)
    pushed(api, other, "other/hidden-ft", checkpoint(finetune_state(base, seed=25)), base="acme/base@1")
    r = api.delete("/v1/models/acme/base", headers=bearer(acme))
    assert r.status_code == 409 and r.json()["error"]["code"] == "has_descendants"
    message = r.json()["error"]["message"]
    assert "hidden-ft" not in message and "other/" not in message
    assert "1 version(s) of models this token cannot read" in message
    r = api.delete("/v1/models/acme/base", headers=bearer(ADMIN))  # an admin reads everything: named
    assert r.status_code == 409 and "other/hidden-ft@1 stores deltas against" in r.json()["error"]["message"]


def test_jobs_leaderboard_stats_and_exist_ok_hide_private_models(api: TestClient) -> None:
    acme = new_token(api, "acme", ["read", "write"])
    acme_write_only = new_token(api, "acme", ["write"])
    other = new_token(api, "other", ["read", "write"])
    r = api.post("/v1/texts", params={"name": "fox"}, content=b"the quick brown fox", headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    outsiders = (("anon", {}), ("other", bearer(other)))
    before = {who: api.get("/v1/stats", headers=h).json() for who, h in outsiders}

    create(api, acme, "acme/secret", private=True)
    api.headers.update(bearer(acme))
    job = push(api, "acme/secret", checkpoint(base_state(seed=26)))["job"]
    assert wait_job(api, job["id"])["status"] == "succeeded"
    api.headers.pop("Authorization")

    for headers in ({}, bearer(other)):
        r = api.get(f"/v1/jobs/{job['id']}", headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found" and "acme" not in r.text
        board = api.get("/v1/leaderboard", params={"text": "fox"}, headers=headers)
        assert board.status_code == 200 and "acme" not in board.text
    assert api.get(f"/v1/jobs/{job['id']}", headers=bearer(acme)).json()["target"] == "acme/secret@1"
    board = api.get("/v1/leaderboard", params={"text": "fox"}, headers=bearer(acme)).json()
    refs = [i["ref"] for i in board["items"]]
    assert refs == ["acme/secret@1"]  # its own namespace still sees it ranked
    assert "acme" not in api.get("/leaderboard", params={"text": "fox"}).text  # nor the page

    for who, headers in outsiders:
        assert api.get("/v1/stats", headers=headers).json() == before[who]  # a private push shows nowhere
    assert "acme" not in api.get("/").text
    assert api.get("/v1/stats", headers=bearer(acme)).json()["models"] == before["anon"]["models"] + 1

    r = api.post(
        "/v1/models", json={"name": "acme/secret", "exist_ok": True}, headers=bearer(acme_write_only)
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_exists", r.text
    assert "versions" not in r.text and "logical_bytes" not in r.text
    r = api.post("/v1/models", json={"name": "acme/secret", "exist_ok": True}, headers=bearer(acme))
    assert r.status_code == 200 and r.json()["name"] == "acme/secret"


def test_stored_bytes_do_not_say_whether_a_private_model_holds_the_same_bytes(
    api: TestClient, tmp_path: Path
) -> None:
    """Blobs are stored once, whoever sends them; a version's ``stored_bytes`` still counts its own
    payloads (tensors, header, other files) in full, so pushing a guess of a private model's file and
    reading what it cost tells nothing: the same as on a server that has never seen those bytes."""
    alice, bob = new_token(api, "alice", ["read", "write"]), new_token(api, "bob", ["read", "write"])
    secret = {**checkpoint(base_state(seed=11)), "config.json": b'{"secret": true}'}
    create(api, alice, "alice/vault", private=True)
    pushed(api, alice, "alice/vault", secret)
    pushed(api, bob, "bob/guess", secret)
    guessed = api.get("/v1/models/bob/guess/versions/1", headers=bearer(bob)).json()
    settings = embedded_settings(tmp_path / "clean").model_copy(update={"auth": True, "admin_token": ADMIN})
    with TestClient(create_app(settings)) as clean:  # a server that never held them
        pushed(clean, new_token(clean, "bob", ["read", "write"]), "bob/guess", secret)
        control = clean.get("/v1/models/bob/guess/versions/1").json()
    assert guessed["stored_bytes"] == control["stored_bytes"] > 0
    assert [t["stored_bytes"] for t in guessed["tensors"]] == [t["stored_bytes"] for t in control["tensors"]]
    assert "alice" not in str(guessed)
