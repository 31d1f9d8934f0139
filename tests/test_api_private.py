"""Private models with auth on: invisible (404) and unwritable without a token on their namespace,
through the API, the SDK and the web pages; token management (admin only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient

from deltazoo import Client, NotFoundError
from deltazoo.errors import AuthenticationError, PermissionDenied
from tests.servers import start_api_server
from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, push, sha, wait_job

ADMIN = "admin-secret"
CFG = b'{"a": 1}'


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = embedded_settings(tmp_path / "home").model_copy(update={"auth": True, "admin_token": ADMIN})
    with TestClient(create_app(settings)) as c:
        yield c


def new_token(api: TestClient, namespace: str | None, scopes: list[str], admin: bool = False) -> str:
    body = {
        "name": f"{namespace}-{'-'.join(scopes)}",
        "namespace": namespace,
        "scopes": scopes,
        "admin": admin,
    }
    r = api.post("/v1/tokens", json=body, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def version_body(data: bytes = CFG, base: str | None = None) -> dict:
    return {"base": base, "files": [{"path": "config.json", "size": len(data), "sha256": sha(data)}]}


def test_token_management_is_admin_only_and_never_shows_secrets(api: TestClient) -> None:
    secret = new_token(api, "acme", ["read", "write"])
    listed = api.get("/v1/tokens", headers=bearer(ADMIN)).json()["items"]
    mine = [t for t in listed if t["name"] == "acme-read-write"]
    assert mine and mine[0]["namespace"] == "acme" and mine[0]["scopes"] == ["read", "write"]
    assert all("token" not in t for t in listed) and secret not in str(listed)
    assert api.get("/v1/tokens").status_code == 401
    r = api.get("/v1/tokens", headers=bearer(secret))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = api.post("/v1/tokens", json={"name": "x", "scopes": ["fly"]}, headers=bearer(ADMIN))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_scopes"
    assert api.delete(f"/v1/tokens/{mine[0]['id']}", headers=bearer(ADMIN)).status_code == 204
    assert api.get("/v1/models", headers=bearer(secret)).status_code == 401  # deleted: unknown now
    r = api.delete(f"/v1/tokens/{mine[0]['id']}", headers=bearer(ADMIN))
    assert r.status_code == 404 and r.json()["error"]["code"] == "token_not_found"


def test_private_model_is_invisible_and_unwritable_without_the_right_token(api: TestClient) -> None:
    acme_rw = new_token(api, "acme", ["read", "write"])
    acme_r = new_token(api, "acme", ["read"])
    other_rw = new_token(api, "other", ["read", "write"])
    all_r = new_token(api, None, ["read"])
    r = api.post("/v1/models", json={"name": "acme/secret", "private": True}, headers=bearer(acme_rw))
    assert r.status_code == 201
    assert api.post("/v1/models", json={"name": "acme/open"}, headers=bearer(acme_rw)).status_code == 201
    assert (
        api.post("/v1/models/acme/secret/versions", json=version_body(), headers=bearer(acme_rw)).status_code
        == 201
    )

    for headers in (
        {},
        bearer(other_rw),
    ):  # anonymous and a token of another namespace: 404, like a missing model
        for path in (
            "/v1/models/acme/secret",
            "/v1/models/acme/secret/versions/1",
            "/v1/models/acme/secret/lineage",
        ):
            r = api.get(path, headers=headers)
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", (path, r.text)
        # a write answers as it does for a missing model (401 anonymous, 403 another namespace): a
        # 404 here against a 401/403 there would tell which private names exist
        for method, path, body in (
            ("POST", "/versions", version_body()),
            ("DELETE", "/versions/1", None),
            ("DELETE", "", None),
            ("PATCH", "", {"private": False}),
            ("PUT", "/tags/prod", {"revision": "1"}),
        ):
            secret = api.request(method, f"/v1/models/acme/secret{path}", json=body, headers=headers)
            missing = api.request(method, f"/v1/models/acme/missing{path}", json=body, headers=headers)
            assert secret.status_code == missing.status_code in (401, 403), (method, path, secret.text)
            assert secret.json()["error"]["code"] == missing.json()["error"]["code"]
        names = [m["name"] for m in api.get("/v1/models", headers=headers).json()["items"]]
        assert "acme/open" in names and "acme/secret" not in names

    for token in (acme_r, all_r, ADMIN):  # read scope on the namespace (or on all) sees it
        assert api.get("/v1/models/acme/secret", headers=bearer(token)).status_code == 200
        names = [m["name"] for m in api.get("/v1/models", headers=bearer(token)).json()["items"]]
        assert "acme/secret" in names
    r = api.post("/v1/models/acme/secret/versions", json=version_body(), headers=bearer(acme_r))
    assert r.status_code == 403 and "write" in r.json()["error"]["message"]
    r = api.post("/v1/models/acme/open/versions", json=version_body())  # public, but writes need a token
    assert r.status_code == 401
    r = api.post("/v1/models/acme/open/versions", json=version_body(), headers=bearer(other_rw))
    assert r.status_code == 403 and "namespace" in r.json()["error"]["message"]


def test_a_private_base_is_not_found_for_a_token_that_cannot_read_it(api: TestClient) -> None:
    acme_rw = new_token(api, "acme", ["read", "write"])
    other_rw = new_token(api, "other", ["read", "write"])
    api.headers.update(bearer(acme_rw))
    api.post("/v1/models", json={"name": "acme/base", "private": True})
    files = checkpoint(base_state(seed=3))
    assert wait_job(api, push(api, "acme/base", files)["job"]["id"])["status"] == "succeeded"
    api.headers.update(bearer(other_rw))
    assert api.post("/v1/models", json={"name": "other/ft"}).status_code == 201
    r = api.post("/v1/models/other/ft/versions", json=version_body(base="acme/base@1"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "base_not_found"
    assert "acme/base" in r.json()["error"]["message"]  # the name it was given, nothing more
    api.headers.update(bearer(acme_rw))
    r = api.post("/v1/models/acme/ft/versions", json=version_body(base="acme/base@1"))
    assert r.status_code == 404  # acme/ft does not exist yet; the base itself is visible:
    api.post("/v1/models", json={"name": "acme/ft", "private": True})
    assert api.post("/v1/models/acme/ft/versions", json=version_body(base="acme/base@1")).status_code == 201


def test_lineage_names_no_private_model_the_viewer_cannot_read(api: TestClient) -> None:
    acme_rw = new_token(api, "acme", ["read", "write"])
    api.headers.update(bearer(acme_rw))
    api.post("/v1/models", json={"name": "acme/base"})
    assert wait_job(api, push(api, "acme/base", checkpoint(base_state(seed=5)))["job"]["id"])["status"] == (
        "succeeded"
    )
    api.post("/v1/models", json={"name": "acme/secret-ft", "private": True})
    tuned = {k: v + 1 for k, v in base_state(seed=5).items()}
    job = push(api, "acme/secret-ft", checkpoint(tuned), base="acme/base@1")["job"]["id"]
    assert wait_job(api, job)["status"] == "succeeded"

    seen = api.get("/v1/models/acme/base/lineage").json()  # the owner sees the private fine-tune
    assert "acme/secret-ft@1" in seen["descendants"]
    api.headers.pop("Authorization")
    anonymous = api.get("/v1/models/acme/base/lineage")
    assert anonymous.status_code == 200
    assert anonymous.json()["descendants"] == [] and "secret" not in anonymous.text
    assert "secret" not in api.get("/models/acme/base").text  # nor the web page


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"DELTAZOO_AUTH": "true", "DELTAZOO_ADMIN_TOKEN": ADMIN}
    server = start_api_server(tmp_path_factory.mktemp("auth") / "home", env)
    try:
        yield server.url
    finally:
        server.stop()
    assert not server.problems(), server.problems()[:3]


def test_sdk_and_web_pages_respect_private_models(auth_server: str, tmp_path: Path) -> None:
    from tests.checkpoints import make_checkpoint, random_tensors

    ckpt = make_checkpoint(tmp_path / "ckpt", random_tensors({"w": (8, 16), "b": (16,)}, seed=5))
    with Client(auth_server, token=ADMIN, cache_dir=tmp_path / "admin-cache") as admin:
        writer = admin.create_token("acme writer", namespace="acme", scopes=["read", "write"])
        assert writer.token and writer.namespace == "acme"
        assert any(t.id == writer.id and t.token is None for t in admin.tokens())
    with Client(auth_server, token=writer.token, cache_dir=tmp_path / "w-cache") as w:
        v = w.push(ckpt, "acme/hidden", private=True, quiet=True)
        assert v.status == "ready"
    with Client(auth_server, cache_dir=tmp_path / "anon-cache") as anon:
        with pytest.raises(NotFoundError):
            anon.model_info("acme/hidden")
        with pytest.raises(NotFoundError):
            anon.pull("acme/hidden@1", tmp_path / "out", quiet=True)
        assert "acme/hidden" not in [m.name for m in anon.list_models().items]
        with pytest.raises(AuthenticationError):
            anon.push(ckpt, "acme/public", quiet=True)
        with pytest.raises(AuthenticationError):
            anon.tokens()
    with Client(auth_server, token=writer.token, cache_dir=tmp_path / "w2-cache") as w:
        with pytest.raises(PermissionDenied):
            w.push(ckpt, "other/thing", quiet=True)
        with pytest.raises(PermissionDenied):
            w.tokens()
        out = w.pull("acme/hidden@1", tmp_path / "mine", quiet=True)
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in Path(ckpt).iterdir())
    index = httpx.get(f"{auth_server}/").text
    assert "acme/hidden" not in index
    assert httpx.get(f"{auth_server}/models/acme/hidden").status_code == 404


def test_blobs_of_a_private_model_are_not_served_to_who_cannot_read_it(api: TestClient) -> None:
    acme_rw = new_token(api, "acme", ["read", "write"])
    other_r = new_token(api, "other", ["read"])
    api.headers.update(bearer(acme_rw))
    api.post("/v1/models", json={"name": "acme/hidden", "private": True})
    api.post("/v1/models", json={"name": "acme/open"})
    for model, seed in (("acme/hidden", 5), ("acme/open", 6)):
        job = push(api, model, checkpoint(base_state(seed=seed)))["job"]
        assert wait_job(api, job["id"])["status"] == "succeeded"

    def blobs(model: str) -> set[str]:
        manifest = api.get(f"/v1/models/{model}/versions/1/manifest").json()
        found = {t["blob"] for f in manifest["files"] for t in f["tensors"] if t["blob"]}
        return found | {f["header_blob"] for f in manifest["files"] if f["header_blob"]}

    public = blobs("acme/open")
    hidden = blobs("acme/hidden") - public  # a blob both hold (dedup) is readable through the public one
    assert hidden and public
    for sha256 in hidden:
        assert api.get(f"/v1/blobs/{sha256}").status_code == 200  # its namespace's token reads it
        for headers in ({"Authorization": ""}, bearer(other_r)):  # anonymous, another namespace: 404
            r = api.get(f"/v1/blobs/{sha256}", headers=headers)
            assert r.status_code == 404 and r.json()["error"]["code"] == "blob_not_found", r.text
    for sha256 in public:
        assert api.get(f"/v1/blobs/{sha256}", headers={"Authorization": ""}).status_code == 200
        assert api.get(f"/v1/blobs/{sha256}", headers=bearer(other_r)).status_code == 200
    # several at once (a delta-only pull's batches): the same checks, blob by blob
    some_public, some_hidden = sorted(public)[:2], sorted(hidden)[:2]
    both = [("sha256", s) for s in (*some_public, *some_hidden)]
    r = api.get("/v1/blobs", params=both)
    assert r.status_code == 200, r.text
    one_by_one = [api.get(f"/v1/blobs/{s}").content for s in (*some_public, *some_hidden)]
    assert r.content == b"".join(one_by_one)
    assert r.headers["Deltazoo-Blob-Sizes"] == ",".join(str(len(b)) for b in one_by_one)
    for headers in ({"Authorization": ""}, bearer(other_r)):
        r = api.get("/v1/blobs", params=both, headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "blob_not_found", r.text
        public_only = [("sha256", s) for s in some_public]
        assert api.get("/v1/blobs", params=public_only, headers=headers).status_code == 200
    for count in (0, 17):
        r = api.get("/v1/blobs", params=[("sha256", some_public[0])] * count)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_blob_count", r.text


def test_a_known_sha256_does_not_dedup_into_a_private_file(api: TestClient) -> None:
    """Declaring the sha256 and size of a private model's file does not skip its upload for a token that
    cannot read that model (or the bytes would be readable through the new version)."""
    acme_rw = new_token(api, "acme", ["read", "write"])
    other_rw = new_token(api, "other", ["read", "write"])
    secret = b'{"private": "weights config"}'
    api.headers.update(bearer(acme_rw))
    api.post("/v1/models", json={"name": "acme/vault", "private": True})
    job = push(api, "acme/vault", {"config.json": secret})["job"]
    assert wait_job(api, job["id"])["status"] == "succeeded"
    api.post("/v1/models", json={"name": "acme/again", "private": True})
    r = api.post("/v1/models/acme/again/versions", json=version_body(secret))
    assert r.json()["uploads"] == [{"path": "config.json", "needed": False}]  # its namespace: deduplicated
    api.post("/v1/models", json={"name": "acme/public"})  # a public model never reuses a private file:
    r = api.post("/v1/models/acme/public/versions", json=version_body(secret))  # its readers could not
    assert r.json()["uploads"] == [{"path": "config.json", "needed": True}]  # follow the `same` links
    api.headers.update(bearer(other_rw))
    api.post("/v1/models", json={"name": "other/copy"})
    r = api.post("/v1/models/other/copy/versions", json=version_body(secret))
    assert r.status_code == 201 and r.json()["uploads"] == [{"path": "config.json", "needed": True}]


def test_a_public_model_cannot_build_on_a_private_base(api: TestClient) -> None:
    acme_rw = new_token(api, "acme", ["read", "write"])
    api.headers.update(bearer(acme_rw))
    api.post("/v1/models", json={"name": "acme/base", "private": True})
    job = push(api, "acme/base", checkpoint(base_state(seed=3)))["job"]
    assert wait_job(api, job["id"])["status"] == "succeeded"
    api.post("/v1/models", json={"name": "acme/public-ft"})
    r = api.post("/v1/models/acme/public-ft/versions", json=version_body(base="acme/base@1"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "private_base", r.text
    assert "private" in r.json()["error"]["message"]
    api.post("/v1/models", json={"name": "acme/private-ft", "private": True})
    r = api.post("/v1/models/acme/private-ft/versions", json=version_body(base="acme/base@1"))
    assert r.status_code == 201


def test_auto_base_never_picks_a_private_model_of_another_namespace(api: TestClient) -> None:
    from tests.checkpoints import TINY_LLAMA_SHAPES, finetune_of, random_tensors

    acme_rw = new_token(api, "acme", ["read", "write"])
    other_rw = new_token(api, "other", ["read", "write"])
    base = random_tensors(TINY_LLAMA_SHAPES, seed=0)
    api.headers.update(bearer(acme_rw))
    api.post("/v1/models", json={"name": "acme/secret-base", "private": True})
    job = push(api, "acme/secret-base", checkpoint(base))["job"]
    assert wait_job(api, job["id"])["status"] == "succeeded"
    ft = checkpoint(finetune_of(base, seed=1))
    api.post("/v1/models", json={"name": "acme/private-ft", "private": True})
    answer = push(api, "acme/private-ft", ft, base="auto")  # its own namespace's private base: found
    assert answer["version"]["parent"] == "acme/secret-base@1"
    assert wait_job(api, answer["job"]["id"])["status"] == "succeeded"
    api.headers.update(bearer(other_rw))
    answer = push(api, "other/ft", ft, base="auto")  # public, another namespace: no look-alike it may see
    assert answer["version"]["parent"] is None and "acme" not in str(answer)
