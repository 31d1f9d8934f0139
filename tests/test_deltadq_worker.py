"""Calibrated profiles through the server: the build job calibrates on the first registered text."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from deltazoo.compression.calibration import collect_hessians
from deltazoo.compression.deltadq import build_artifact
from deltazoo.compression.packed import load_artifact
from deltazoo.compression.quality import build_causal_lm
from deltazoo.registry.settings import Settings
from fastapi.testclient import TestClient

from tests.test_api_support import push, wait_job
from tests.test_eval_leaderboard import CONFIG, TEXT, _files, _model_state

PROFILES = ["deltadq:n=1,m=32,bits=4,fit=obs", "deltadq:n=1,m=32,bits=4,select=search"]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path / "home", database_url=None, broker_url=None, s3_endpoint=None, auth=False,
        max_text_bytes=4096,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _artifact(client: TestClient, profile: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        arts = {a["profile"]: a for a in client.get("/v1/models/lm/ft/versions/1").json()["artifacts"]}
        if arts[profile]["status"] in ("ready", "failed") or time.monotonic() > deadline:
            return arts[profile]
        time.sleep(0.05)


@pytest.mark.parametrize("profile", PROFILES)
def test_calibrated_profile_needs_a_text_then_calibrates_on_it(
    client: TestClient, tmp_path: Path, profile: str
) -> None:
    base, ft = _model_state(0, 0), _model_state(0, 0)
    gen = torch.Generator().manual_seed(3)
    ft = {k: (v.float() + 0.01 * torch.randn(v.shape, generator=gen)).to(v.dtype) for k, v in ft.items()}
    assert wait_job(client, push(client, "lm/base", _files(base))["job"]["id"])["status"] == "succeeded"
    answer = push(client, "lm/ft", _files(ft), base="lm/base@1", profiles=[profile])
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    failed = _artifact(client, profile)
    assert failed["status"] == "failed"
    assert "needs a calibration text: register one with POST /v1/texts" in failed["status_message"]
    r = client.post("/v1/models/lm/ft/versions/1/artifacts", json={"profile": profile})  # said at once
    assert r.status_code == 409 and r.json()["error"]["code"] == "calibration_text_missing", r.text

    assert client.post("/v1/texts", params={"name": "fox"}, content=TEXT.encode()).status_code == 201
    r = client.post("/v1/models/lm/ft/versions/1/artifacts", json={"profile": profile})
    assert r.status_code == 202 and wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    assert _artifact(client, profile)["status"] == "ready"
    path = tmp_path / "a.safetensors"
    path.write_bytes(client.get(f"/v1/models/lm/ft/versions/1/artifacts/{profile}").content)
    stored = load_artifact(path)
    hessians = collect_hessians(build_causal_lm(CONFIG, base), TEXT)
    direct = build_artifact(base, ft, profile, calibration=hessians)
    assert set(stored.packed) == set(direct.packed) and stored.packed
    for name, d in direct.packed.items():  # the same mask; values from the same calibration
        assert torch.equal(stored.packed[name].indices, d.indices)
        assert torch.equal(stored.packed[name].values, d.values)
