"""Privacy audit of every Hugging Face Hub route (issue 15): a caller who may not read a private model
gets, on every route, exactly the answer a missing model gets (same status, same ``X-Error-Code``, same
body once the two names are swapped), and no answer carries its commit id or a file's sha256; listings,
whoami and the LFS batch API do not show it either. Real ``deltazoo serve``, auth on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deltazoo import Client
from tests.checkpoints import file_sha256, make_base_and_finetune
from tests.servers import ApiServer, running_api_server

ADMIN = "hub-privacy-admin-secret"
SECRET, MISSING = "secret/m", "secret/nothing"


class Zoo:
    def __init__(self, api: ApiServer, tmp: Path) -> None:
        self.url = api.url
        pair = make_base_and_finetune(tmp / "ckpt")
        with Client(api.url, token=ADMIN) as c:
            version = c.push(pair.base, SECRET, private=True, quiet=True)
            c.tag(f"{SECRET}@{version.revision}", "prod")
            self.other = c.create_token("privacy-other", namespace="other", scopes=["read", "write"]).token
        self.commit = version.commit_id
        self.file_sha = file_sha256(pair.base / "model.safetensors")
        self.file_size = (pair.base / "model.safetensors").stat().st_size
        httpx.post(
            f"{api.url}/api/repos/create",
            json={"name": "pub", "organization": "other"},
            headers={"Authorization": f"Bearer {self.other}"},
        ).raise_for_status()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    home = tmp_path_factory.mktemp("hub-privacy") / "home"
    with running_api_server(home, {"DELTAZOO_AUTH": "true", "DELTAZOO_ADMIN_TOKEN": ADMIN}) as api:
        yield Zoo(api, tmp_path_factory.mktemp("hub-privacy-ckpt"))


def routes(zoo: Zoo, repo: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, request keywords) of every Hub route that names a repository."""
    lfs_object = {"operation": "upload", "objects": [{"oid": zoo.file_sha, "size": zoo.file_size}]}
    ndjson = b'{"key": "header", "value": {"summary": "x"}}\n{"key": "deletedFile", "value": {"path": "a"}}\n'
    return [
        ("GET", f"/api/models/{repo}", {}),
        ("GET", f"/api/models/{repo}/revision/main", {}),
        ("GET", f"/api/models/{repo}/revision/prod", {}),
        ("GET", f"/api/models/{repo}/revision/{zoo.commit}", {}),
        ("GET", f"/api/models/{repo}/tree/main", {"params": {"recursive": "true"}}),
        ("GET", f"/api/models/{repo}/tree/{zoo.commit}/sub", {}),
        ("POST", f"/api/models/{repo}/paths-info/main", {"data": {"paths": ["model.safetensors"]}}),
        ("GET", f"/api/models/{repo}/refs", {}),
        ("HEAD", f"/{repo}/resolve/main/config.json", {}),
        ("GET", f"/{repo}/resolve/prod/model.safetensors", {"headers": {"Range": "bytes=0-15"}}),
        ("GET", f"/{repo}/resolve/{zoo.commit}/missing.txt", {}),
        ("POST", f"/api/models/{repo}/preupload/main", {"json": {"files": [{"path": "a.bin", "size": 3}]}}),
        ("POST", f"/api/models/{repo}/commit/main", {"content": ndjson}),
        ("POST", f"/{repo}.git/info/lfs/objects/batch", {"json": lfs_object}),
        ("POST", f"/{repo}.git/info/lfs/verify", {"json": {"oid": zoo.file_sha, "size": zoo.file_size}}),
        ("GET", f"/api/models/{repo}/xet-read-token/main", {}),
    ]


def _answer(response: httpx.Response, repo: str) -> tuple[int, str | None, str]:
    return response.status_code, response.headers.get("X-Error-Code"), response.text.replace(repo, "REPO")


@pytest.mark.parametrize("who", ["anonymous", "other namespace"])
def test_every_repo_route_answers_a_private_model_as_a_missing_one(zoo: Zoo, who: str) -> None:
    headers = {} if who == "anonymous" else {"Authorization": f"Bearer {zoo.other}"}
    with httpx.Client(base_url=zoo.url, headers=headers, timeout=60) as http:
        for (method, path, kw), (_, missing_path, missing_kw) in zip(
            routes(zoo, SECRET), routes(zoo, MISSING), strict=True
        ):
            private = http.request(method, path, **kw)
            missing = http.request(method, missing_path, **missing_kw)
            assert 400 <= private.status_code < 500, (method, path, private.status_code, private.text)
            assert _answer(private, SECRET) == _answer(missing, MISSING), (method, path)
            shown = private.text + " ".join(f"{k}: {v}" for k, v in private.headers.items())
            assert zoo.commit not in shown and zoo.file_sha not in shown, (method, path)
        # the owner's view of the same routes is not a 404: the audit reaches real answers
        owner = http.get(f"/api/models/{SECRET}/revision/prod", headers={"Authorization": f"Bearer {ADMIN}"})
        assert owner.status_code == 200 and owner.json()["sha"] == zoo.commit


@pytest.mark.parametrize("who", ["anonymous", "other namespace"])
def test_listings_and_whoami_do_not_show_a_private_model(zoo: Zoo, who: str) -> None:
    headers = {} if who == "anonymous" else {"Authorization": f"Bearer {zoo.other}"}
    with httpx.Client(base_url=zoo.url, headers=headers, timeout=60) as http:
        for params in ({}, {"search": "m"}, {"author": "secret"}, {"search": "secret/m"}):
            listed = http.get("/api/models", params=params)
            assert listed.status_code == 200
            assert SECRET not in listed.text and zoo.commit not in listed.text, params
            assert "Link" not in listed.headers  # no page of hidden models follows
        whoami = http.get("/api/whoami-v2")
        assert "secret" not in whoami.text
    with httpx.Client(base_url=zoo.url, timeout=60) as admin:
        listed = admin.get(
            "/api/models", params={"author": "secret"}, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert SECRET in listed.text  # the owner sees it


def test_lfs_batch_does_not_report_private_bytes_as_present(zoo: Zoo) -> None:
    """Knowing a private file's sha256 and size gains nothing: for a model of its own namespace the other
    writer is asked to upload it, exactly as for bytes the server has never seen."""
    h = {"Authorization": f"Bearer {zoo.other}"}
    unseen = hashlib.sha256(b"never stored").hexdigest()
    body = {
        "operation": "upload",
        "transfers": ["basic"],
        "objects": [{"oid": zoo.file_sha, "size": zoo.file_size}, {"oid": unseen, "size": zoo.file_size}],
    }
    answer = httpx.post(f"{zoo.url}/other/pub.git/info/lfs/objects/batch", json=body, headers=h)
    assert answer.status_code == 200, answer.text
    held, fresh = answer.json()["objects"]
    assert set(held) == set(fresh) and "upload" in held["actions"]
    # the admin, who may read the private model, is told it is present when uploading to it
    mine = httpx.post(
        f"{zoo.url}/secret/m.git/info/lfs/objects/batch",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert "actions" not in mine.json()["objects"][0]
