"""The embedded server SIGKILLed in the middle of an encode that reads its staged file around the page
cache (``direct_io``, the default; the file is over ``direct_io.MIN_DIRECT``, so its upload was staged
that way too): started again on the same home, the job resumes and stores exactly what an uninterrupted
run stores, and the pull is sha256-exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import torch

from deltazoo.direct_io import MIN_DIRECT
from tests.servers import start_api_server
from tests.test_api_support import checkpoint, push, sha, wait_job
from tests.test_faults import many_tensors, wait_mid_job

SETTINGS = {
    "DELTAZOO_DIRECT_IO": "1",
    "DELTAZOO_JOB_COMMIT_EVERY_S": "0",  # progress committed after every tensor: the kill lands mid-job
}


def pair() -> tuple[dict[str, bytes], dict[str, bytes]]:
    base = many_tensors(1100, seed=3)  # 1,100 tensors of 16 KiB: one 17.6 MB file
    g = torch.Generator().manual_seed(4)
    ft = {
        k: (v.float() * (1 + 0.02 * torch.randn(v.shape, generator=g))).to(torch.bfloat16)
        for k, v in base.items()
    }
    files = checkpoint(base), checkpoint(ft)
    assert len(files[1]["model.safetensors"]) > MIN_DIRECT
    return files


def stored(client: httpx.Client, model: str) -> list[tuple[Any, ...]]:
    manifest = client.get(f"/v1/models/{model}/versions/1/manifest").json()
    return sorted(
        (f["path"], f.get("header_blob"), t["name"], t["encoding"], t["blob"], repr(t.get("chunks")))
        for f in manifest["files"]
        for t in f.get("tensors", [])
    )


def test_embedded_server_killed_mid_encode_resumes_exactly(tmp_path: Path) -> None:
    base, ft = pair()

    reference = start_api_server(tmp_path / "reference", SETTINGS)
    try:
        with httpx.Client(base_url=reference.url, timeout=60) as client:
            assert wait_job(client, push(client, "org/base", base)["job"]["id"])["status"] == "succeeded"
            assert (
                wait_job(client, push(client, "org/ft", ft, base="org/base@1")["job"]["id"])["status"]
                == "succeeded"
            )
            want = stored(client, "org/ft")
    finally:
        reference.stop()

    home = tmp_path / "home"
    api = start_api_server(home, SETTINGS)
    try:
        with httpx.Client(base_url=api.url, timeout=60) as client:
            assert wait_job(client, push(client, "org/base", base)["job"]["id"])["status"] == "succeeded"
            job_id = push(client, "org/ft", ft, base="org/base@1")["job"]["id"]
            wait_mid_job(client, job_id)
        api.process.kill()
    finally:
        api.stop()

    again = start_api_server(home, SETTINGS)  # the in-process runner takes up the job it left running
    try:
        with httpx.Client(base_url=again.url, timeout=60) as client:
            assert wait_job(client, job_id)["status"] == "succeeded"
            assert stored(client, "org/ft") == want
            for path, data in ft.items():
                r = client.get(f"/v1/models/org/ft/versions/1/files/{path}")
                assert r.status_code == 200 and sha(r.content) == sha(data)
        assert not again.problems(), again.problems()[:3]
    finally:
        again.stop()
