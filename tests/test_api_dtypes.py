"""A checkpoint holding every dtype real checkpoints carry (f64, full-mantissa f32, f16, bf16, fp8 E4M3 /
E5M2 with their f32 scales, int8/uint8 quantized weights, int16-64 and uint16-64 buffers, bool masks)
pushed as a base and as a fine-tune of it through the embedded service, and pulled back bit for bit;
unchanged tensors are stored once (``same``) and changed ones coded against their parent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient
from safetensors.torch import load

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import checkpoint, push, sha, wait_job

INTS = (
    torch.int8, torch.uint8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.int64, torch.uint64
)


def every_dtype(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 32, generator=g, dtype=torch.float64) * 0.05
    state = {
        "f64.weight": w.clone(),
        "f32.weight": w.float() * (1 + torch.randn(24, 32, generator=g) * 1e-3),  # full mantissas
        "f16.weight": w.half(),
        "bf16.weight": w.bfloat16(),
        "e4m3.weight": (w * 40).to(torch.float8_e4m3fn),
        "e4m3.weight_scale": torch.tensor([0.025], dtype=torch.float32),
        "e5m2.weight": (w * 40).to(torch.float8_e5m2),
        "e5m2.weight_scale": torch.tensor([0.03], dtype=torch.float32),
        "mask": torch.rand(24, 32, generator=g) > 0.5,
    }
    for dt in INTS:
        hi = min(torch.iinfo(dt).max, 1 << 40)
        state[f"{str(dt)[6:]}.buffer"] = torch.randint(0, hi, (24, 32), generator=g, dtype=torch.int64).to(dt)
    return state


def changed(base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A fine-tune: every other tensor changed a little (bit patterns stepped by ±1 or values nudged)."""
    ft = {}
    for i, (name, t) in enumerate(sorted(base.items())):
        if i % 2:
            ft[name] = t.clone()
        elif t.dtype == torch.bool:
            ft[name] = t.clone()
            ft[name][0, :5] = ~ft[name][0, :5]
        elif t.is_floating_point() and t.element_size() >= 2:
            ft[name] = (t.double() * 1.01).to(t.dtype)  # > half a bf16 ulp
        else:  # fp8 codes and integers: step the low byte of a few elements' bit patterns
            size = t.element_size()
            raw = t.contiguous().view(-1).view(torch.uint8).clone()
            raw[0 : 7 * size : size] += 1
            ft[name] = raw.view(t.dtype).view(t.shape)
    return ft


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as c:
        yield c


def test_every_dtype_round_trips_and_unchanged_tensors_are_stored_once(client: TestClient) -> None:
    base = every_dtype(0)
    files = {"base": checkpoint(base), "ft": checkpoint(changed(base))}
    dtypes = {str(v.dtype) for v in load(files["base"]["model.safetensors"]).values()}
    assert len(dtypes) == 15  # every safetensors dtype deltazoo stores
    job = push(client, "org/all-base", files["base"])["job"]
    assert wait_job(client, job["id"])["status"] == "succeeded"
    job = push(client, "org/all-ft", files["ft"], base="org/all-base@1")["job"]
    assert wait_job(client, job["id"])["status"] == "succeeded"
    for model, ckpt in (("org/all-base", files["base"]), ("org/all-ft", files["ft"])):
        for path, data in ckpt.items():
            r = client.get(f"/v1/models/{model}/versions/latest/files/{path}")
            assert r.status_code == 200
            assert sha(r.content) == sha(data)
    detail = client.get("/v1/models/org/all-ft/versions/1").json()
    enc = {t["name"]: t["encoding"] for t in detail["tensors"]}
    stored = {t["name"]: (t["stored_bytes"], t["logical_bytes"]) for t in detail["tensors"]}
    for i, name in enumerate(sorted(base)):  # no two tensors hold the same bytes: same = its parent's
        # a changed tensor is a delta, or its bytes as they are where coding them would take more
        assert enc[name] == "same" if i % 2 else enc[name] in ("delta", "plain"), name
        assert stored[name][0] <= stored[name][1] + 8, (name, stored[name])
    assert stored["e4m3.weight_scale"] == (12, 4)  # a scalar: 4 bytes and the 8-byte header, not a stream
    stats = client.get("/v1/stats").json()
    assert 0 < stats["stored_bytes"] < stats["logical_bytes"]


def test_nan_and_infinite_weights_commit_and_round_trip(client: TestClient) -> None:
    """Float tensors holding NaN and ±inf (a -inf attention mask, a diverged weight) in every float dtype:
    the commit (which samples values for ``base="auto"``) stores them, ``auto`` still finds the parent,
    and both versions pull back bit for bit. JSON holds no NaN: a sketch that kept one was refused by the
    database (503)."""
    g = torch.Generator().manual_seed(5)
    base: dict[str, torch.Tensor] = {}
    for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        w = torch.randn(64, 64, generator=g, dtype=torch.float64) * 0.05
        w[::3, ::5] = float("nan")
        w[1::4, ::3] = float("inf")
        w[2::4, 1::3] = float("-inf")
        name = str(dt)[6:]
        base[f"{name}.weight"] = w.to(dt)
        base[f"{name}.mask"] = torch.full((16, 16), float("-inf"), dtype=dt).triu(1)
    ft = {k: (v.double() * 1.01).to(v.dtype) if k.endswith("weight") else v.clone() for k, v in base.items()}
    files = {"base": checkpoint(base), "ft": checkpoint(ft)}
    job = push(client, "org/nan-base", files["base"])["job"]
    assert wait_job(client, job["id"])["status"] == "succeeded"
    answer = push(client, "org/nan-ft", files["ft"], base="auto")
    assert answer["version"]["parent"] == "org/nan-base@1"
    assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    encodings = {t["encoding"] for t in client.get("/v1/models/org/nan-ft/versions/1").json()["tensors"]}
    assert encodings == {"delta", "same"}
    for model, ckpt in (("org/nan-base", files["base"]), ("org/nan-ft", files["ft"])):
        for path, data in ckpt.items():
            r = client.get(f"/v1/models/{model}/versions/latest/files/{path}")
            assert r.status_code == 200 and sha(r.content) == sha(data)
