"""``--retain lossy``: a float32 checkpoint archived with ELF, end to end. The SDK against a real embedded
server (push, pull, integrity check against the served sha256), the REST version detail, the web page and
the CLI saying lossy, every weight within 2⁻²⁴, and the refusal (422) of a checkpoint that is not float32."""

from __future__ import annotations

import hashlib
import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from deltazoo.compression import elf32
from fastapi.testclient import TestClient
from safetensors.torch import load, save

from deltazoo import Client
from deltazoo.cli import main as cli_main
from deltazoo.errors import ClientError
from tests.test_api_dtypes import client  # noqa: F401  (the fixture)
from tests.test_api_support import CONFIG, sha, wait_job

ELF_BOUND = 2.0**-24


def f32_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 96, generator=g) * 0.02
    w.view(-1)[:6] = torch.tensor([1.5, -2.0, float("inf"), float("nan"), -0.0, 1e-40])
    return {
        "layer.weight": w,
        "layer.bias": torch.randn(96, generator=g) * 0.3,
        "big.weight": torch.randn(300, 300, generator=g) * 0.05,
        "position_ids": torch.arange(96, dtype=torch.int64),  # not a float: kept exactly
    }


def write(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(save(state))
    (folder / "config.json").write_bytes(CONFIG)
    return folder


def check_served(pushed: dict[str, torch.Tensor], pulled: dict[str, torch.Tensor]) -> None:
    """Each F32 element within 2⁻²⁴ of the pushed one (specials and |x| >= 1 bit for bit), the rest
    exact, and the served bytes exactly what ELF defines."""
    assert pushed.keys() == pulled.keys()
    for name, t in pushed.items():
        got = pulled[name]
        raw = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        if t.dtype != torch.float32:
            assert torch.equal(t, got), name
            continue
        assert got.view(-1).view(torch.uint8).numpy().tobytes() == elf32.served(raw), name
        a = t.double().view(-1).numpy()
        b = got.double().view(-1).numpy()
        finite = np.isfinite(a)
        assert (np.abs(a[finite] - b[finite]) <= ELF_BOUND).all(), name
        assert (t.view(-1)[~torch.from_numpy(finite)].view(torch.int32)
                == got.view(-1)[~torch.from_numpy(finite)].view(torch.int32)).all()


def test_lossy_push_and_pull_through_the_sdk(
    embedded_server: str, unique_org: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = f32_checkpoint(0)
    folder = write(tmp_path / "ckpt", state)
    pushed_sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    with Client(embedded_server, cache_dir=tmp_path / "cache") as c:
        c.upload_part_bytes = 64 << 10  # and in resumable parts
        v = c.push(folder, f"{unique_org}/archive", retain="lossy", quiet=True)
        assert v.status == "ready" and v.lossy
        files = {f.path: f for f in v.files}
        weights = files["model.safetensors"]
        assert weights.original_sha256 == pushed_sha and weights.sha256 != pushed_sha
        assert files["config.json"].original_sha256 in (None, files["config.json"].sha256)
        assert {t.encoding for t in v.tensors} == {"plain"}
        out = c.pull(v.ref, tmp_path / "out", quiet=True)  # the client checks the served sha256
        data = (out / "model.safetensors").read_bytes()
        assert hashlib.sha256(data).hexdigest() == weights.sha256
        check_served(state, load(data))
        assert (out / "config.json").read_bytes() == CONFIG
        exact = c.push(folder, f"{unique_org}/exact", quiet=True)  # the same files, exactly
        assert not exact.lossy
        assert {f.path: f.sha256 for f in exact.files}["model.safetensors"] == pushed_sha
        again = c.pull(exact.ref, tmp_path / "exact", quiet=True)
        assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    monkeypatch.setenv("DELTAZOO_CACHE", str(tmp_path / "cli-cache"))
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert cli_main(["--url", embedded_server, "info", v.ref]) == 0
    assert "LOSSY" in stdout.getvalue() and "2^-24" in stdout.getvalue()
    with redirect_stdout(io.StringIO()):
        assert cli_main(["--url", embedded_server, "pull", v.ref, str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == data


def test_a_checkpoint_that_is_not_float32_is_refused(
    embedded_server: str, unique_org: str, tmp_path: Path
) -> None:
    state = {k: v.bfloat16() if v.is_floating_point() else v for k, v in f32_checkpoint(1).items()}
    folder = write(tmp_path / "bf16", state)
    with Client(embedded_server, cache_dir=tmp_path / "cache") as c:
        with pytest.raises(ClientError, match="float32 checkpoints only.*BF16") as caught:
            c.push(folder, f"{unique_org}/bf16", retain="lossy", quiet=True)
        assert caught.value.status == 422 and caught.value.code == "lossy_needs_f32"
        assert not c.list_models(f"{unique_org}/bf16").items  # the refused push left nothing behind


def test_rest_version_detail_and_web_page_say_lossy(client: TestClient) -> None:  # noqa: F811
    data = save(f32_checkpoint(2))
    assert client.post("/v1/models", json={"name": "org/lossy"}).status_code == 201
    declared = [{"path": "model.safetensors", "size": len(data), "sha256": sha(data)}]
    body = {"files": declared, "retain": "lossy"}
    created = client.post("/v1/models/org/lossy/versions", json=body)
    assert created.status_code == 201 and created.json()["version"]["lossy"] is True
    put = client.put("/v1/models/org/lossy/versions/1/files/model.safetensors", content=data)
    assert put.status_code == 200, put.text
    committed = client.post("/v1/models/org/lossy/versions/1/commit")
    assert committed.status_code == 202, committed.text
    assert wait_job(client, committed.json()["job"]["id"])["status"] == "succeeded"
    detail = client.get("/v1/models/org/lossy/versions/1").json()
    assert detail["lossy"] is True
    assert detail["files"][0]["original_sha256"] == sha(data) != detail["files"][0]["sha256"]
    served = client.get("/v1/models/org/lossy/versions/1/files/model.safetensors").content
    assert sha(served) == detail["files"][0]["sha256"]
    html = client.get("/models/org/lossy/1").text
    assert "LOSSY" in html and "--retain lossy" in html and sha(data)[:16] in html
    bad = client.post("/v1/models/org/lossy/versions", json={**body, "retain": "maybe"})
    assert bad.status_code == 422
    f16 = save({"w": torch.randn(8, 8).half()})
    body = {"files": [{"path": "model.safetensors", "size": len(f16), "sha256": sha(f16)}], "retain": "lossy"}
    assert client.post("/v1/models/org/lossy/versions", json=body).status_code == 201
    put = client.put("/v1/models/org/lossy/versions/2/files/model.safetensors", content=f16)
    assert put.status_code == 200, put.text
    refused = client.post("/v1/models/org/lossy/versions/2/commit")
    error = refused.json()["error"]
    assert refused.status_code == 422 and error["code"] == "lossy_needs_f32", refused.text
    assert "F16" in error["message"] and "without --retain lossy" in error["message"]


def test_a_chunked_tensor_is_archived_chunk_by_chunk(tmp_path: Path) -> None:
    from deltazoo.api.app import create_app

    from tests.test_api_roundtrip import embedded_settings

    settings = embedded_settings(tmp_path / "home").model_copy(update={"tensor_chunk_mb": 1})
    state = {"big.weight": torch.randn(800, 800, generator=torch.Generator().manual_seed(5)) * 0.02}
    data = save(state)  # 2.4 MiB of f32: three chunks
    with TestClient(create_app(settings)) as api:
        assert api.post("/v1/models", json={"name": "org/big"}).status_code == 201
        declared = [{"path": "model.safetensors", "size": len(data), "sha256": sha(data)}]
        created = api.post("/v1/models/org/big/versions", json={"files": declared, "retain": "lossy"})
        assert created.status_code == 201, created.text
        url = "/v1/models/org/big/versions/1/files/model.safetensors"
        assert api.put(url, content=data).status_code == 200
        committed = api.post("/v1/models/org/big/versions/1/commit")
        assert wait_job(api, committed.json()["job"]["id"])["status"] == "succeeded"
        detail = api.get("/v1/models/org/big/versions/1").json()
        served = api.get(url).content
        assert sha(served) == detail["files"][0]["sha256"]
        assert detail["files"][0]["original_sha256"] == sha(data)
        assert detail["tensors"][0]["stored_bytes"] < 0.75 * len(data)
        check_served(state, load(served))
        middle = api.get(url, headers={"Range": "bytes=1500000-1500099"})
        assert middle.status_code == 206 and middle.content == served[1500000:1500100]
