"""Lossy serving profiles through the API: requested at push, built by a job, downloaded as the packed
container, and applied to the base they approximate the fine-tune."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from deltazoo.compression.deltadq import build_artifact
from deltazoo.compression.packed import load_artifact
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, finetune_state, push, sha, wait_job

PROFILE = "deltadq:n=2,m=8,bits=8"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as c:
        yield c


def wait_artifact(client: TestClient, ref_path: str, profile: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        arts = {a["profile"]: a for a in client.get(ref_path).json()["artifacts"]}
        if arts[profile]["status"] in ("ready", "failed") or time.monotonic() > deadline:
            return arts[profile]
        time.sleep(0.05)


def test_profile_built_and_downloaded(client: TestClient, tmp_path: Path) -> None:
    base = base_state()
    ft = finetune_state(base)
    assert wait_job(client, push(client, "org/base", checkpoint(base))["job"]["id"])["status"] == "succeeded"
    answer = push(client, "org/ft", checkpoint(ft), base="org/base@1", profiles=["deltadq: bits=8, m=8, n=2"])
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    art = wait_artifact(client, "/v1/models/org/ft/versions/1", PROFILE)
    assert art["status"] == "ready", art
    r = client.get(f"/v1/models/org/ft/versions/1/artifacts/{PROFILE}")
    assert r.status_code == 200 and len(r.content) == art["bytes"]
    path = tmp_path / "a.safetensors"
    path.write_bytes(r.content)
    artifact = load_artifact(path)
    approx = artifact.apply_to(base)
    assert set(approx) >= set(ft)
    direct = build_artifact(base, ft, PROFILE).apply_to(base)  # what the server must have stored
    assert set(artifact.packed) and all(torch.equal(approx[k], direct[k]) for k in direct)
    assert torch.equal(approx["lm_head.weight"], ft["lm_head.weight"])  # new tensor kept exact


def test_artifact_errors(client: TestClient) -> None:
    base = base_state()
    assert wait_job(client, push(client, "org/base", checkpoint(base))["job"]["id"])["status"] == "succeeded"
    r = client.get(f"/v1/models/org/base/versions/1/artifacts/{PROFILE}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "artifact_not_found"
    assert "it has no base" in r.json()["error"]["message"]  # not "request it": that would fail too
    r = client.post("/v1/models/org/base/versions/1/artifacts", json={"profile": PROFILE})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_base"
    r = client.post("/v1/models/org/base/versions/1/artifacts", json={"profile": "zip"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_profile"


def test_artifact_requested_after_push(client: TestClient) -> None:
    base = base_state()
    assert wait_job(client, push(client, "org/base", checkpoint(base))["job"]["id"])["status"] == "succeeded"
    ft = push(client, "org/ft", checkpoint(finetune_state(base)), base="org/base@1")
    assert wait_job(client, ft["job"]["id"])["status"] == "succeeded"
    r = client.post("/v1/models/org/ft/versions/1/artifacts", json={"profile": PROFILE})
    assert r.status_code == 202
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    assert client.get(f"/v1/models/org/ft/versions/1/artifacts/{PROFILE}").status_code == 200


def test_a_profile_without_a_base_is_refused_before_anything_is_stored(client: TestClient) -> None:
    """A serving profile is a delta against the base: asked for on a root, the version was stored, the
    build failed and the push reported a failure after all. Now a 422 at create, nothing kept."""
    files = checkpoint(base_state(seed=9))
    body = {"files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]}
    client.post("/v1/models", json={"name": "org/rootprof"})
    body["profiles"] = ["deltadq:n=1,m=32,bits=4"]
    r = client.post("/v1/models/org/rootprof/versions", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "profile_needs_base", r.text
    assert "--base" in r.json()["error"]["message"]
    assert client.get("/v1/models/org/rootprof").json()["versions"] == []


def test_a_profile_that_packs_nothing_fails_saying_why(client: TestClient) -> None:
    """An f32 fine-tune of a bf16 base: no layer can be packed against its base, so the "profile" was a
    dense copy (twice the fine-tune's stored size) shown as 100 % gain kept. It fails, saying why."""
    base = base_state()
    ft32 = {k: v.float() for k, v in finetune_state(base).items()}
    assert wait_job(client, push(client, "org/base", checkpoint(base))["job"]["id"])["status"] == "succeeded"
    answer = push(client, "org/ft32", checkpoint(ft32), base="org/base@1", profiles=[PROFILE])
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"  # the exact version is stored
    art = wait_artifact(client, "/v1/models/org/ft32/versions/1", PROFILE)
    assert art["status"] == "failed" and "packs no layer" in art["status_message"], art
