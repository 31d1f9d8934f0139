"""Tiny base + fine-tune checkpoints made in the test (bf16 safetensors + config.json), and an API helper."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

CONFIG = json.dumps({"architectures": ["TinyForTest"], "hidden_size": 32}).encode()


def base_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(48, 32, generator=g).to(torch.bfloat16),
        "layers.0.q.weight": (torch.randn(32, 32, generator=g) * 0.05).to(torch.bfloat16),
        "layers.0.k.weight": (torch.randn(32, 32, generator=g) * 0.05).to(torch.bfloat16),
        "layers.0.v.weight": (torch.randn(32, 32, generator=g) * 0.05).to(torch.bfloat16),
        "norm.weight": torch.ones(32, dtype=torch.bfloat16),
    }


def finetune_state(base: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """Small noise on some tensors, one identical tensor, a grown vocabulary, one new tensor."""
    g = torch.Generator().manual_seed(seed)
    ft = {}
    for name, t in base.items():
        if name == "norm.weight":
            ft[name] = t.clone()
        else:
            ft[name] = (t.float() + torch.randn(t.shape, generator=g) * 1e-3).to(torch.bfloat16)
    ft["embed.weight"] = torch.cat([ft["embed.weight"], torch.randn(4, 32, generator=g).to(torch.bfloat16)])
    ft["lm_head.weight"] = torch.randn(52, 32, generator=g).to(torch.bfloat16)
    return ft


def checkpoint(state: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {"model.safetensors": save(state), "config.json": CONFIG}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_dir(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def wait_job(client: Any, job_id: int, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def push(
    client: Any,
    name: str,
    files: dict[str, bytes],
    base: str | None = None,
    profiles: list[str] | None = None,
) -> dict[str, Any]:
    """Create (or reuse) the model, a version, upload what is needed, commit; returns the commit answer."""
    r = client.post("/v1/models", json={"name": name, "exist_ok": True})
    assert r.status_code in (200, 201), r.text
    body = {
        "base": base,
        "files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()],
        "profiles": profiles or [],
    }
    r = client.post(f"/v1/models/{name}/versions", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    rev = created["version"]["revision"]
    for up in created["uploads"]:
        if up["needed"]:
            data = files[up["path"]]
            r = client.put(
                f"/v1/models/{name}/versions/{rev}/files/{up['path']}",
                content=data,
                headers={"Content-Length": str(len(data))},
            )
            assert r.status_code == 200, r.text
    r = client.post(f"/v1/models/{name}/versions/{rev}/commit")
    assert r.status_code == 202, r.text
    return {**r.json(), "uploads": created["uploads"]}
