"""Large tensors stored in chunks: exact round trips (plain, delta, delta-rows, same), Range reads that
decode only what they return (memory proportional to the chunk, not the tensor), delete collecting
every chunk blob, and detached copies of a chunked tensor staying exact."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from deltazoo.registry.db import session_scope
from deltazoo.services import storage
from deltazoo.services.refs import get_version
from deltazoo.services.transfer import iter_file, plan_file
from fastapi.testclient import TestClient
from safetensors.torch import save

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import CONFIG, push, sha, wait_job

MIB = 1 << 20


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = embedded_settings(tmp_path / "home").model_copy(update={"tensor_chunk_mb": 1})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    base = {
        "big.weight": (torch.randn(1536, 1024, generator=g) * 0.02).to(torch.bfloat16),  # 3 MiB: 3 chunks
        "embed.weight": (torch.randn(1100, 1024, generator=g) * 0.02).to(torch.bfloat16),
        "norm.weight": torch.ones(1024, dtype=torch.bfloat16),
    }
    ft = {
        "big.weight": (base["big.weight"].float() + torch.randn(1536, 1024, generator=g) * 1e-3).to(
            torch.bfloat16
        ),
        # a grown vocabulary: delta on the parent's 1100 rows, the new rows plain (a chunk boundary there)
        "embed.weight": torch.cat(
            [base["embed.weight"], torch.randn(200, 1024, generator=g).to(torch.bfloat16)]
        ),
        "norm.weight": base["norm.weight"].clone(),
    }
    return base, ft


def files_of(state: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {"model.safetensors": save(state), "config.json": CONFIG}


def pushed(api: TestClient, name: str, files: dict[str, bytes], base: str | None = None) -> None:
    assert wait_job(api, push(api, name, files, base=base)["job"]["id"])["status"] == "succeeded"


def test_chunked_tensors_round_trip_and_any_range_is_exact(api: TestClient) -> None:
    base, ft = states()
    files = {"base": files_of(base), "ft": files_of(ft)}
    pushed(api, "org/base", files["base"])
    pushed(api, "org/ft", files["ft"], base="org/base@1")
    pushed(api, "org/copy", files_of({**ft, "extra": torch.ones(8, dtype=torch.bfloat16)}))  # `same` twins

    encodings = {t["name"]: t["encoding"] for t in api.get("/v1/models/org/ft/versions/1").json()["tensors"]}
    assert encodings == {"big.weight": "delta", "embed.weight": "delta-rows", "norm.weight": "same"}
    manifest = api.get("/v1/models/org/ft/versions/1/manifest").json()
    chunks = {t["name"]: t["chunks"] for f in manifest["files"] for t in f["tensors"]}
    assert len(chunks["big.weight"]) == 3 and {c["encoding"] for c in chunks["big.weight"]} == {"delta"}
    boundaries = [c["begin"] for c in chunks["embed.weight"]]
    assert 1100 * 1024 in boundaries  # the parent's elements end on a chunk boundary
    assert chunks["norm.weight"] is None  # small tensors are stored whole

    for name, data in (
        ("org/base", files["base"]["model.safetensors"]),
        ("org/ft", files["ft"]["model.safetensors"]),
    ):
        r = api.get(f"/v1/models/{name}/versions/1/files/model.safetensors")
        assert r.status_code == 200 and sha(r.content) == sha(data)
        rng = random.Random(name)
        for _ in range(12):
            start = rng.randrange(len(data))
            end = min(len(data), start + rng.choice([1, 2, 15, 16, 4097, MIB + 3]))
            r = api.get(
                f"/v1/models/{name}/versions/1/files/model.safetensors",
                headers={"Range": f"bytes={start}-{end - 1}"},
            )
            assert r.status_code == 206 and r.content == data[start:end], (name, start, end)
    copy = api.get("/v1/models/org/copy/versions/1/files/model.safetensors").content
    assert copy == files_of({**ft, "extra": torch.ones(8, dtype=torch.bfloat16)})["model.safetensors"]

    for ref in ("org/copy", "org/ft", "org/base"):  # children first; every chunk blob is collected
        assert api.delete(f"/v1/models/{ref}").status_code == 204
    stats = api.get("/v1/stats").json()
    assert stats["blobs"] == 0 and stats["stored_bytes"] == 0


def test_a_small_range_of_a_big_tensor_decodes_only_its_chunks(api: TestClient, tmp_path: Path) -> None:
    """Memory of a 16-byte Range read is bounded by the chunk size (1 MiB here), not the tensor's 24 MiB:
    the old code rebuilt the whole tensor (and its parent) for any range."""
    g = torch.Generator().manual_seed(3)
    base = {"w": (torch.randn(12 * 1024, 1024, generator=g) * 0.02).to(torch.bfloat16)}  # 24 MiB
    ft = {"w": (base["w"].float() + torch.randn(12 * 1024, 1024, generator=g) * 1e-3).to(torch.bfloat16)}
    pushed(api, "org/big", files_of(base))
    pushed(api, "org/big-ft", files_of(ft), base="org/big@1")
    data = files_of(ft)["model.safetensors"]
    settings = api.app.state.settings  # type: ignore[attr-defined]
    store = api.app.state.store  # type: ignore[attr-defined]
    with session_scope(settings) as session:
        _, version = get_version(session, "org", "big-ft", 1)
        plan = plan_file(session, store, version, "model.safetensors", "org/big-ft@1")
    tensor_bytes = 24 * MIB
    for start in (len(data) - 16, len(data) // 2):
        storage.RAW_CACHE.clear()
        tracemalloc.start()
        got = b"".join(bytes(b) for b in iter_file(store, plan, start, start + 16))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert got == data[start : start + 16]
        assert peak < tensor_bytes // 4, f"a 16-byte read peaked at {peak / MIB:.1f} MiB"


def test_a_client_that_checks_the_sha256_itself_is_sent_the_file_unhashed(api: TestClient) -> None:
    """``Deltazoo-Client-Verifies: sha256`` (the SDK's downloads): the server rebuilds the file without
    checking each chunk against its recorded sha256, and keeps nothing unchecked in its raw cache.
    A chunk row whose recorded sha256 is made wrong shows which: refused without the header, sent with
    it (the bytes themselves are right, so the client's check of the whole file passes)."""
    from deltazoo.registry.models import Tensor, TensorChunk
    from sqlalchemy import select, update

    base, ft = states()
    pushed(api, "org/base", files_of(base))
    pushed(api, "org/ft", files_of(ft), base="org/base@1")
    data = files_of(ft)["model.safetensors"]
    url = "/v1/models/org/ft/versions/1/files/model.safetensors"
    checks = {"Deltazoo-Client-Verifies": "sha256"}

    storage.RAW_CACHE.clear()
    r = api.get(url, headers=checks)
    assert r.status_code == 200 and r.content == data
    assert len(storage.RAW_CACHE) == 0  # nothing decoded unchecked was kept
    r = api.get(url)
    assert r.status_code == 200 and r.content == data
    assert len(storage.RAW_CACHE) > 0  # checked chunks are kept for other readers

    settings = api.app.state.settings  # type: ignore[attr-defined]
    with session_scope(settings) as session:
        tensor_ids = select(Tensor.id).where(Tensor.name == "big.weight", Tensor.encoding == "delta")
        session.execute(
            update(TensorChunk)
            .where(TensorChunk.tensor_id.in_(tensor_ids), TensorChunk.index == 1)
            .values(sha256="0" * 64)
        )
    storage.RAW_CACHE.clear()
    r = api.get(url, headers=checks)
    assert r.status_code == 200 and r.content == data
    storage.RAW_CACHE.clear()
    try:
        refused = api.get(url).content != data
    except Exception:  # the stream is cut once the wrong chunk is found (headers are sent by then)
        refused = True
    assert refused, "the server sent a chunk that does not match its recorded sha256"
