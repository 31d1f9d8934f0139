"""Tensors encoded side by side in one job: the same stored bytes as one lane, also after a crash mid-way."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from deltazoo.api.app import create_app
from deltazoo.registry.objectstore import LocalObjectStore
from deltazoo.registry.settings import Settings
from deltazoo.workers.jobs import JobContext, run_job
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, finetune_state, push, sha, wait_job


def wide_pair() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A base and a fine-tune with enough tensors to keep several lanes busy, and every encoding:
    ``delta``, ``delta-rows``, ``plain``, ``same`` of a stored tensor, and ``same`` of an earlier
    tensor of the same upload (tied weights); with 1 MiB chunks the ``big.*`` tensors are chunked
    (their chunks shared out between the lanes), among them a grown vocabulary and a tied copy."""
    g = torch.Generator().manual_seed(7)
    base = base_state()
    for i in range(12):
        base[f"layers.{i}.mlp.weight"] = (torch.randn(64, 48, generator=g) * 0.02).to(torch.bfloat16)
    base["big.a.weight"] = (torch.randn(1536, 1024, generator=g) * 0.02).to(torch.bfloat16)  # 3 chunks
    base["big.rows.weight"] = (torch.randn(1100, 1024, generator=g) * 0.02).to(torch.bfloat16)
    ft = finetune_state(base)
    ft["big.rows.weight"] = torch.cat(
        [ft["big.rows.weight"], torch.randn(200, 1024, generator=g).to(torch.bfloat16)]
    )
    ft["big.tied.weight"] = ft["big.a.weight"].clone()  # a chunked twin of a chunked tensor of this upload
    ft["lm_head_tied.weight"] = ft["lm_head.weight"].clone()  # same bytes as a tensor just before it
    ft["layers.3.mlp.weight"] = base["layers.3.mlp.weight"].clone()  # unchanged: same as the base's
    return base, ft


def stored(settings: Settings, client: TestClient, ref: str) -> dict[str, Any]:
    """Everything a version stored: its tensor rows (ids aside) and the bytes of every object."""
    objects = settings.objects_dir / "blobs"
    detail = client.get(f"/v1/models/{ref}").json()
    blobs = {
        t["name"]: (t["blob"], repr(t["parent"]), repr(t.get("chunks")))
        for f in client.get(f"/v1/models/{ref}/manifest").json()["files"]
        for t in f.get("tensors", [])
    }
    rows = [
        (t["name"], t["encoding"], t["stored_bytes"], t["parent"], *blobs[t["name"]])
        for t in detail["tensors"]
    ]
    return {
        "rows": sorted(rows),
        "stored_bytes": detail["stored_bytes"],
        "blobs": {
            str(p.relative_to(objects)): p.read_bytes() for p in sorted(objects.rglob("*")) if p.is_file()
        },
    }


def _manual_dispatch(client: TestClient) -> None:
    client.app.state.dispatcher.stop()  # type: ignore[attr-defined]
    client.app.state.dispatcher = type("Recorder", (), {"submit": staticmethod(lambda _id: None)})()  # type: ignore[attr-defined]


class CrashingStore(LocalObjectStore):
    """Raises on the n-th ranged read (from whichever lane makes it): the job stops mid-encode."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.reads, self.fail_at = 0, fail_at
        self.lock = threading.Lock()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        with self.lock:
            self.reads += 1
            fail = self.reads == self.fail_at
        if fail:
            raise ConnectionError("object store connection dropped")
        return super().get_range(key, offset, length)


def encode_pair(
    home: Path, threads: int, fail_at: int | None, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    import deltazoo.workers.jobs  # noqa: F401 (loads workers.jobs)
    from deltazoo.services import encode_pipeline, tensor_rows


    monkeypatch.setattr(tensor_rows, "ROWS_PER_WRITE", 1)  # rows written one by one
    monkeypatch.setattr(encode_pipeline, "LOOKUP_BATCH", 1)
    every_tensor = {"job_commit_every_s": 0.0}  # commit after every tensor
    settings = embedded_settings(home).model_copy(
        update={"encode_threads": threads, "tensor_chunk_mb": 1, **every_tensor}
    )
    base, ft = wide_pair()
    files = {"base": checkpoint(base), "ft": checkpoint(ft)}
    with TestClient(create_app(settings)) as client:
        _manual_dispatch(client)
        ctx = JobContext(settings, LocalObjectStore(settings.objects_dir), lambda _id: None)
        assert run_job(push(client, "org/base", files["base"])["job"]["id"], ctx) == "succeeded"
        job = push(client, "org/ft", files["ft"], base="org/base@1")["job"]
        if fail_at is not None:
            crashing = JobContext(settings, CrashingStore(settings.objects_dir, fail_at), lambda _id: None)
            with pytest.raises(ConnectionError):
                run_job(job["id"], crashing)
            partial = client.get("/v1/models/org/ft/versions/1").json()
            assert partial["status"] == "processing"
            assert 0 < len(partial["tensors"]) < len(ft), "the crash should come mid-file"
            assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        assert run_job(job["id"], ctx) == "succeeded"
        assert wait_job(client, job["id"])["status"] == "succeeded"
        for path, data in files["ft"].items():
            assert sha(client.get(f"/v1/models/org/ft/versions/1/files/{path}").content) == sha(data)
        return stored(settings, client, "org/ft/versions/1")


def test_parallel_encode_stores_what_one_lane_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = encode_pair(tmp_path / "one", 1, None, monkeypatch)
    four = encode_pair(tmp_path / "four", 4, None, monkeypatch)
    assert four == one
    encodings = {row[0]: row[1] for row in one["rows"]}
    assert encodings["layers.0.q.weight"] == "delta"
    assert encodings["embed.weight"] == "delta-rows"
    assert encodings["lm_head.weight"] == "plain"
    assert encodings["lm_head_tied.weight"] == "same"  # of the tensor just before it, still being encoded
    assert encodings["layers.3.mlp.weight"] == "same"  # of the base's
    assert (encodings["big.a.weight"], encodings["big.rows.weight"]) == ("delta", "delta-rows")
    assert encodings["big.tied.weight"] == "same"
    chunks = {row[0]: row[-1] for row in one["rows"]}
    assert chunks["big.a.weight"].count("'encoding': 'delta'") == 3  # every chunk against the base's


def test_chunks_read_again_store_what_kept_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunked tensor's chunks are kept from its hashing for its encode while the read-ahead budget
    allows, else read (and hashed) again: both store the same bytes."""
    from deltazoo.services import encode_pipeline

    kept = encode_pair(tmp_path / "kept", 4, None, monkeypatch)
    monkeypatch.setattr(encode_pipeline, "READ_AHEAD_BYTES", 0)  # no chunk kept: every one read again
    assert encode_pair(tmp_path / "read-again", 4, None, monkeypatch) == kept


@pytest.mark.parametrize("fail_at", [22, 30])
def test_crash_mid_parallel_encode_resumes_to_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    one = encode_pair(tmp_path / "one", 1, None, monkeypatch)
    resumed = encode_pair(tmp_path / "crash", 4, fail_at, monkeypatch)
    assert resumed == one
