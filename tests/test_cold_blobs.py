"""Deltas are cold, bases warm: with ``direct_io`` (the default) an encode writes the blobs of its delta
chunks around the page cache (read when that one version is pulled) and its plain ones through it (a
base: every child's encode and pull reads them); every pull is still sha256-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import checkpoint, push, sha, wait_job
from tests.test_direct_io import _cached, _takes_o_direct


def test_delta_blobs_bypass_the_page_cache_and_pull_exactly(tmp_path: Path) -> None:
    if not _takes_o_direct(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    g = torch.Generator().manual_seed(11)
    base = {"big.weight": (torch.randn(4096, 1024, generator=g) * 0.02).to(torch.bfloat16)}  # 8 MiB
    ft = {
        "big.weight": (
            base["big.weight"].float() * (1 + 0.02 * torch.randn(4096, 1024, generator=g))
        ).bfloat16()
    }
    settings = embedded_settings(tmp_path / "home").model_copy(update={"tensor_chunk_mb": 4})
    assert settings.direct_io
    files = {"base": checkpoint(base), "ft": checkpoint(ft)}
    with TestClient(create_app(settings)) as client:
        for model, parent in (("org/base", None), ("org/ft", "org/base@1")):
            job = push(client, model, files[model.split("/")[1]], base=parent)["job"]
            assert wait_job(client, job["id"])["status"] == "succeeded"

        def chunk_blobs(model: str) -> list[tuple[str, Path]]:
            manifest = client.get(f"/v1/models/{model}/versions/1/manifest").json()
            (tensor,) = [t for f in manifest["files"] for t in f.get("tensors", [])]
            return [
                (c["encoding"], settings.objects_dir / "blobs" / c["blob"][:2] / c["blob"])
                for c in tensor["chunks"]
            ]

        plain, deltas = chunk_blobs("org/base"), chunk_blobs("org/ft")
        assert [e for e, _ in plain] == ["plain", "plain"] and [e for e, _ in deltas] == ["delta", "delta"]
        assert all(p.stat().st_size >= (1 << 20) for _, p in deltas)  # big enough to go around the cache
        assert all(_cached(p) for _, p in plain)
        assert not any(_cached(p) for _, p in deltas)
        for model in ("org/ft", "org/base"):
            r = client.get(f"/v1/models/{model}/versions/1/files/model.safetensors")
            assert r.status_code == 200 and sha(r.content) == sha(
                files[model.split("/")[1]]["model.safetensors"]
            )
        assert not any(_cached(p) for _, p in deltas)  # the pull read them around the cache too
