"""Uploads staged, and read back by the encode, around the page cache (``direct_io``, a local store):
whatever the parts' alignment, and after a replay of the part file, the version stores exactly the bytes
it stores with the setting off."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from deltazoo.api.app import create_app
from deltazoo.services.resumable import partials_for
from fastapi.testclient import TestClient
from safetensors.torch import save

from deltazoo import direct_io
from deltazoo.direct_io import ALIGN
from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import push, sha, wait_job
from tests.test_encode_parallel import stored

# part boundaries of the fine-tune's resumable upload: on a block, off one (the next part is appended
# buffered), on one again (direct again), then the rest
CUTS = [3 * ALIGN, 5 * ALIGN + 5, 6 * ALIGN, 64 * ALIGN, 150 * ALIGN + 1]


def pair() -> tuple[bytes, bytes]:
    g = torch.Generator().manual_seed(7)
    base = {f"w{i}": torch.randn(256, 512, generator=g) * 0.02 for i in range(4)}
    ft = {name: t + torch.randn(t.shape, generator=g) * 1e-3 for name, t in base.items()}
    as_bf16 = {name: t.to(torch.bfloat16) for name, t in ft.items()}
    return save({n: t.to(torch.bfloat16) for n, t in base.items()}), save(as_bf16)


def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Every DirectWriter (its offset, whether direct) and DirectReader (whether direct) made."""
    made: dict[str, list[Any]] = {"writers": [], "readers": []}
    write_init, read_init = direct_io.DirectWriter.__init__, direct_io.DirectReader.__init__

    def writer(self: direct_io.DirectWriter, *args: Any, **kwargs: Any) -> None:
        write_init(self, *args, **kwargs)
        made["writers"].append((self.offset, self.direct))

    def reader(self: direct_io.DirectReader, *args: Any, **kwargs: Any) -> None:
        read_init(self, *args, **kwargs)
        made["readers"].append(self.direct)

    monkeypatch.setattr(direct_io.DirectWriter, "__init__", writer)
    monkeypatch.setattr(direct_io.DirectReader, "__init__", reader)
    monkeypatch.setattr(direct_io, "MIN_DIRECT", 0)  # these small files are written as big ones are
    return made


def push_in_parts(client: TestClient, name: str, data: bytes, base: str, replay_at: int) -> dict[str, Any]:
    """Declare, upload in the parts ``CUTS`` names, commit. Before the part starting at ``replay_at``
    the server forgets the upload's hash state, as after a restart: it reads the part file again."""
    assert client.post("/v1/models", json={"name": name}).status_code == 201
    body = {"base": base, "files": [{"path": "model.safetensors", "size": len(data), "sha256": sha(data)}]}
    assert client.post(f"/v1/models/{name}/versions", json=body).status_code == 201
    url = f"/v1/models/{name}/versions/1/files/model.safetensors"
    for start, end in zip([0, *CUTS], [*CUTS, len(data)], strict=True):
        if start == replay_at:
            partials_for(client.app.state.settings.home)._sinks.clear()  # type: ignore[attr-defined]  # noqa: SLF001
        headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}
        r = client.put(url, content=data[start:end], headers=headers)
        assert r.status_code == (200 if end == len(data) else 202), r.text
    r = client.post(f"/v1/models/{name}/versions/1/commit")
    assert r.status_code == 202, r.text
    return r.json()


def push_pair(home: Path, direct: bool) -> dict[str, Any]:
    base, ft = pair()
    settings = embedded_settings(home).model_copy(update={"direct_io": direct, "tensor_chunk_mb": 1})
    with TestClient(create_app(settings)) as client:
        job = push(client, "org/base", {"model.safetensors": base})["job"]
        assert wait_job(client, job["id"])["status"] == "succeeded"
        job = push_in_parts(client, "org/ft", ft, base="org/base@1", replay_at=CUTS[2])["job"]
        assert wait_job(client, job["id"])["status"] == "succeeded"
        assert sha(client.get("/v1/models/org/ft/versions/1/files/model.safetensors").content) == sha(ft)
        return stored(settings, client, "org/ft/versions/1")


def test_direct_staging_stores_the_bytes_buffered_staging_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = spy(monkeypatch)
    on = push_pair(tmp_path / "on", direct=True)
    if not any(direct for _, direct in made["writers"]):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    writers_on, readers_on = list(made["writers"]), list(made["readers"])
    made["writers"].clear()
    made["readers"].clear()
    off = push_pair(tmp_path / "off", direct=False)
    assert on == off
    assert made["writers"] == [] and True not in made["readers"]  # off: nothing around the page cache

    # the base in one request, then the fine-tune's parts: direct where a part starts on a block
    parts = [(start, start % ALIGN == 0) for start in [0, *CUTS]]
    assert writers_on == [(0, True), *parts]
    assert True in readers_on  # the encode's reads (and the replay of the part file)


def test_a_refused_part_stops_its_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = spy(monkeypatch)
    _, ft = pair()
    bad = bytearray(ft)
    bad[:8] = (1 << 40).to_bytes(8, "little")  # a header length past the end of the file
    settings = embedded_settings(tmp_path / "home")
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/models", json={"name": "org/ft"}).status_code == 201
        body = {"files": [{"path": "model.safetensors", "size": len(ft), "sha256": sha(ft)}]}
        assert client.post("/v1/models/org/ft/versions", json=body).status_code == 201
        url = "/v1/models/org/ft/versions/1/files/model.safetensors"
        r = client.put(
            url, content=bytes(bad[: CUTS[0]]), headers={"Content-Range": f"bytes 0-{CUTS[0] - 1}/{len(ft)}"}
        )
        assert r.status_code == 400, r.text
        assert client.get("/v1/models/org/ft/versions/1/uploads/model.safetensors").json()["received"] == 0
    assert made["writers"] and all(t.name != "direct-writer" for t in threading.enumerate())
