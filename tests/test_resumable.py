"""Resumable uploads: a file sent in Content-Range parts, cut off mid-way, resumed from the server's
received offset (only the missing bytes are sent), bit-exact after commit; the SDK does it by itself."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save

from deltazoo.client import Client
from tests.servers import ApiServer, start_api_server
from tests.test_api_support import sha, wait_job, write_dir

PART = 64 << 10


def big_checkpoint(seed: int) -> dict[str, bytes]:
    g = torch.Generator().manual_seed(seed)
    state = {f"w{i}": torch.randn(128, 256, generator=g).to(torch.bfloat16) for i in range(6)}
    return {"model.safetensors": save(state)}  # 6 x 64 KiB of tensors: several parts


def declare(client: httpx.Client, model: str, files: dict[str, bytes]) -> None:
    assert client.post("/v1/models", json={"name": model}).status_code == 201
    body = {"files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]}
    assert client.post(f"/v1/models/{model}/versions", json=body).status_code == 201


def put_part(client: httpx.Client, url: str, data: bytes, start: int, end: int) -> httpx.Response:
    headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}
    return client.put(url, content=data[start:end], headers=headers)


def test_upload_cut_off_resumes_with_the_missing_bytes_only(embedded_server: str, unique_org: str) -> None:
    files = big_checkpoint(seed=1)
    data = files["model.safetensors"]
    model = f"{unique_org}/resume"
    with httpx.Client(base_url=embedded_server, timeout=60) as client:
        declare(client, model, files)
        url = f"/v1/models/{model}/versions/1/files/model.safetensors"
        status_url = f"/v1/models/{model}/versions/1/uploads/model.safetensors"
        expected = {"path": "model.safetensors", "size": len(data), "received": 0, "complete": False}
        assert client.get(status_url).json() == expected
        for start in (0, PART):
            r = put_part(client, url, data, start, start + PART)
            assert r.status_code == 202 and r.json()["received"] == start + PART, r.text

        r = put_part(client, url, data, 0, PART)  # not where the received bytes end
        assert r.status_code == 409 and r.json()["error"]["code"] == "upload_offset_mismatch"
        assert str(2 * PART) in r.json()["error"]["message"]
        r = client.put(url, content=b"x", headers={"Content-Range": f"bytes 0-0/{len(data) + 1}"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "size_mismatch"

        class Cut(RuntimeError):
            pass

        def cut_off() -> Iterator[bytes]:  # the third part: half of it, then the connection is gone
            yield data[2 * PART : 2 * PART + PART // 2]
            raise Cut("network gone")

        content_range = f"bytes {2 * PART}-{3 * PART - 1}/{len(data)}"
        headers = {"Content-Range": content_range, "Content-Length": str(PART)}
        with pytest.raises(Cut):
            client.put(url, content=cut_off(), headers=headers)

    with httpx.Client(base_url=embedded_server, timeout=60) as client:
        received = client.get(status_url).json()["received"]
        assert 2 * PART <= received <= 2 * PART + PART // 2
        sent = 0
        start = received
        while start < len(data):
            end = min(len(data), start + PART)
            r = put_part(client, url, data, start, end)
            sent += end - start
            assert r.status_code == (200 if end == len(data) else 202), r.text
            start = end
        assert sent == len(data) - received  # only the missing bytes went over the wire
        assert r.json()["sha256"] == sha(data)
        r = client.post(f"/v1/models/{model}/versions/1/commit")
        assert r.status_code == 202, r.text
        assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
        assert sha(client.get(f"/v1/models/{model}/versions/1/files/model.safetensors").content) == sha(data)


def test_corrupt_part_rejects_the_whole_upload(embedded_server: str, unique_org: str) -> None:
    files = big_checkpoint(seed=2)
    data = files["model.safetensors"]
    model = f"{unique_org}/corrupt"
    with httpx.Client(base_url=embedded_server, timeout=60) as client:
        declare(client, model, files)
        url = f"/v1/models/{model}/versions/1/files/model.safetensors"
        assert put_part(client, url, data, 0, PART).status_code == 202
        bad = data[:PART] + bytes(len(data) - PART)  # right size, wrong bytes
        for start in range(PART, len(data), PART):
            r = put_part(client, url, bad, start, min(len(data), start + PART))
            if start + PART < len(data):
                assert r.status_code == 202, r.text
        assert r.status_code == 400 and r.json()["error"]["code"] == "sha256_mismatch"
        status = client.get(f"/v1/models/{model}/versions/1/uploads/model.safetensors").json()
        assert status["received"] == 0  # a rejected upload leaves nothing
        r = client.post(f"/v1/models/{model}/versions/1/commit")
        assert r.status_code == 400 and r.json()["error"]["code"] == "files_missing"


class _Stream(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks


class DropOnce(httpx.BaseTransport):
    """A real HTTP transport that cuts one part's body off half-way and counts the bytes sent."""

    def __init__(self, drop_at: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.drop_at = drop_at
        self.dropped = False
        self.starts: list[int] = []
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content_range = request.headers.get("content-range")
        if request.method == "PUT" and content_range:
            start = int(content_range.split()[1].split("-")[0])
            self.starts.append(start)
            cut = not self.dropped and start == self.drop_at
            self.dropped = self.dropped or cut
            request.stream = _Stream(self._count(request.stream, cut))  # type: ignore[arg-type]
        return self.inner.handle_request(request)

    def _count(self, stream: Iterable[bytes], cut: bool) -> Iterator[bytes]:
        budget = PART // 2 if cut else None
        for chunk in stream:
            if budget is not None:
                chunk = chunk[:budget]
                budget -= len(chunk)
            self.sent += len(chunk)
            yield chunk
            if budget == 0:
                raise httpx.WriteError("connection dropped (test)")

    def close(self) -> None:
        self.inner.close()


def test_sdk_push_resumes_after_a_dropped_connection(
    embedded_server: str, unique_org: str, tmp_path: Path
) -> None:
    files = big_checkpoint(seed=3)
    data = files["model.safetensors"]
    transport = DropOnce(drop_at=2 * PART)
    with Client(embedded_server, cache_dir=tmp_path / "cache", transport=transport) as client:
        client.upload_part_bytes = PART
        client.push(write_dir(tmp_path / "ckpt", files), f"{unique_org}/sdk", quiet=True)
        assert transport.dropped, "the test never cut a part off"
        resumed = transport.starts[transport.starts.index(2 * PART) + 1]
        assert resumed >= 2 * PART, "parts the server held were sent again"
        assert transport.sent <= len(data) + PART // 2  # the cut-off half at most is sent twice
        pulled = client.pull(f"{unique_org}/sdk", tmp_path / "pulled", quiet=True)
    assert sha((pulled / "model.safetensors").read_bytes()) == sha(data)


class RestartApiOnce(httpx.BaseTransport):
    """A real HTTP transport that, as the part at ``at`` is about to go, stops the API and starts it
    again (same home, same port) ``down_s`` seconds later: an API restarted mid-upload."""

    def __init__(self, api: ApiServer, at: int, down_s: float) -> None:
        self.inner, self.api, self.at, self.down_s = httpx.HTTPTransport(), api, at, down_s
        self.restarter: threading.Thread | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content_range = request.headers.get("content-range", "")
        if self.restarter is None and content_range.startswith(f"bytes {self.at}-"):
            self.api.stop()
            port = int(self.api.url.rsplit(":", 1)[1])

            def start_again() -> None:
                time.sleep(self.down_s)
                self.api = start_api_server(self.api.home, {}, port=port)

            self.restarter = threading.Thread(target=start_again)
            self.restarter.start()
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_sdk_push_waits_for_an_api_restarted_mid_upload(tmp_path: Path) -> None:
    """Down longer than the transport's own retries last (one retry here, ≈ 8 s by default): the push asks
    again until the API is back (``DELTAZOO_OUTAGE_WAIT_S``) and goes on from the bytes it holds."""
    files = big_checkpoint(seed=4)
    transport = RestartApiOnce(start_api_server(tmp_path / "home", {}), at=2 * PART, down_s=3.0)
    try:
        with Client(transport.api.url, cache_dir=tmp_path / "cache", transport=transport) as client:
            client.upload_part_bytes = PART
            client.transport.max_retries = 1  # 0.25 s of retries: the API's start outlasts them
            client.push(write_dir(tmp_path / "ckpt", files), "acme/restarted", quiet=True)
            assert transport.restarter is not None, "the test never stopped the API"
            pulled = client.pull("acme/restarted", tmp_path / "pulled", quiet=True)
        assert sha((pulled / "model.safetensors").read_bytes()) == sha(files["model.safetensors"])
    finally:
        if transport.restarter is not None:
            transport.restarter.join()
        transport.api.stop()


def test_parts_of_uploads_that_can_no_longer_finish_are_swept(tmp_path: Path) -> None:
    from deltazoo.api.app import create_app
    from fastapi.testclient import TestClient

    from tests.test_api_roundtrip import embedded_settings
    from tests.test_api_support import push

    home = tmp_path / "home"
    files = big_checkpoint(seed=2)
    data = files["model.safetensors"]
    with TestClient(create_app(embedded_settings(home))) as client:
        for model in ("zoo/dropped", "zoo/waiting"):
            declare(client, model, files)  # type: ignore[arg-type]  # TestClient is an httpx.Client
            url = f"/v1/models/{model}/versions/1/files/model.safetensors"
            assert put_part(client, url, data, 0, PART).status_code == 202  # type: ignore[arg-type]
        parts = sorted((home / "uploads").glob("*.part"))
        assert len(parts) == 2 and all(p.stat().st_size == PART for p in parts)
        assert client.delete("/v1/models/zoo/dropped/versions/1").status_code == 204
        assert parts[0].exists()  # deleted versions' parts go at the next sweep (API start, any commit)
        job = push(client, "zoo/other", {"config.json": b"{}"})["job"]
        assert wait_job(client, job["id"])["status"] == "succeeded"
        assert not parts[0].exists() and parts[1].exists()  # the pending upload keeps its bytes
        r = client.get("/v1/models/zoo/waiting/versions/1/uploads/model.safetensors")
        assert r.json()["received"] == PART


# --- a large file declared without sha256: hashed by the client while it is sent, named by its last part


def test_file_declared_without_sha256_is_named_by_its_last_part(
    embedded_server: str, unique_org: str
) -> None:
    files = {**big_checkpoint(seed=4), "config.json": b'{"model_type": "llama"}'}
    data = files["model.safetensors"]
    model = f"{unique_org}/named"
    with httpx.Client(base_url=embedded_server, timeout=60) as client:
        assert client.post("/v1/models", json={"name": model}).status_code == 201
        body = {
            "files": [
                {"path": "model.safetensors", "size": len(data), "sha256": None},
                {
                    "path": "config.json",
                    "size": len(files["config.json"]),
                    "sha256": sha(files["config.json"]),
                },
            ]
        }
        assert client.post(f"/v1/models/{model}/versions", json=body).status_code == 201
        assert client.put(
            f"/v1/models/{model}/versions/1/files/config.json", content=files["config.json"]
        ).is_success
        url = f"/v1/models/{model}/versions/1/files/model.safetensors"
        status_url = f"/v1/models/{model}/versions/1/uploads/model.safetensors"
        last = (len(data) - 1) // PART * PART
        for start in range(0, last, PART):
            assert put_part(client, url, data, start, start + PART).status_code == 202

        r = put_part(client, url, data, last, len(data))  # the last byte, no sha256 named
        assert r.status_code == 400 and r.json()["error"]["code"] == "sha256_required", r.text
        assert client.get(status_url).json()["received"] == last, "the bytes held were lost"
        r = client.put(url, content=data, headers={"Deltazoo-Sha256": "not-hex"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_sha256", r.text

        wrong = {"Content-Range": f"bytes {last}-{len(data) - 1}/{len(data)}", "Deltazoo-Sha256": sha(b"x")}
        r = client.put(url, content=data[last:], headers=wrong)
        assert r.status_code == 400 and r.json()["error"]["code"] == "sha256_mismatch", r.text
        assert client.get(status_url).json()["received"] == 0  # bytes that are not the file are dropped
        r = client.post(f"/v1/models/{model}/versions/1/commit")
        assert r.status_code == 400 and r.json()["error"]["code"] == "files_missing"
        assert "model.safetensors" in r.json()["error"]["message"]  # config.json is still held

        r = client.put(url, content=data, headers={"Deltazoo-Sha256": sha(data)})  # one request this time
        assert r.status_code == 200 and r.json()["sha256"] == sha(data), r.text
        r = client.post(f"/v1/models/{model}/versions/1/commit")
        assert r.status_code == 202, r.text
        assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
        for path, content in files.items():
            assert sha(client.get(f"/v1/models/{model}/versions/1/files/{path}").content) == sha(content)


def test_sdk_push_hashes_large_files_while_sending_and_skips_what_the_server_holds(
    embedded_server: str, unique_org: str, tmp_path: Path
) -> None:
    files = {**big_checkpoint(seed=5), "tokenizer.json": b'{"version": "1.0"}' * 100}
    folder = write_dir(tmp_path / "ckpt", files)
    bodies: list[dict] = []

    class Declared(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and request.url.path.endswith("/versions"):
                bodies.append(json.loads(request.read()))
            return super().handle_request(request)

    with Client(embedded_server, cache_dir=tmp_path / "cache", transport=Declared()) as client:
        client.upload_part_bytes = PART
        client.push(folder, f"{unique_org}/first", quiet=True)
        client.transport.bytes_uploaded = 0
        client.push(folder, f"{unique_org}/second", quiet=True)
        # the small file, hashed first, is already stored: not sent; the large one goes in parts
        assert client.transport.bytes_uploaded == len(files["model.safetensors"])
        pulled = client.pull(f"{unique_org}/second", tmp_path / "pulled", quiet=True)
    declared = {f["path"]: f["sha256"] for f in bodies[-1]["files"]}
    assert declared == {"model.safetensors": None, "tokenizer.json": sha(files["tokenizer.json"])}
    assert {p: sha((pulled / p).read_bytes()) for p in files} == {p: sha(d) for p, d in files.items()}


def test_push_resumed_onto_bytes_of_another_file_sends_the_whole_file(
    embedded_server: str, unique_org: str, tmp_path: Path
) -> None:
    """An interrupted push of one file, then a push of another file of the same path and size to the same
    model: the resume matches (neither was named), the server refuses the mixed bytes, and the client
    sends the whole new file once."""
    old, new = big_checkpoint(seed=6), big_checkpoint(seed=7)
    data = new["model.safetensors"]
    assert len(old["model.safetensors"]) == len(data)
    model = f"{unique_org}/replaced"
    with httpx.Client(base_url=embedded_server, timeout=60) as client:
        assert client.post("/v1/models", json={"name": model}).status_code == 201
        body = {"files": [{"path": "model.safetensors", "size": len(data), "sha256": None}], "resume": True}
        assert client.post(f"/v1/models/{model}/versions", json=body).status_code == 201
        url = f"/v1/models/{model}/versions/1/files/model.safetensors"
        assert put_part(client, url, old["model.safetensors"], 0, PART).status_code == 202
    with Client(embedded_server, cache_dir=tmp_path / "cache") as client:
        client.upload_part_bytes = PART
        client.push(write_dir(tmp_path / "ckpt", new), model, quiet=True)
        assert client.last_push_resumed
        assert [v.revision for v in client.model_info(model).versions] == [1]
        pulled = client.pull(model, tmp_path / "pulled", quiet=True)
    assert sha((pulled / "model.safetensors").read_bytes()) == sha(data)


def test_a_whole_file_upload_cut_off_keeps_nothing_and_logs_no_error(tmp_path: Path) -> None:
    """A whole-file PUT whose connection drops mid-body: its spooled bytes are removed at once (not left
    for the orphan sweep), the server logs no unhandled error, and the file can be sent again."""
    import socket
    import time
    from urllib.parse import urlparse

    from tests.servers import start_api_server

    server = start_api_server(tmp_path / "home", {})
    try:
        files = big_checkpoint(seed=2)
        data = files["model.safetensors"]
        with httpx.Client(base_url=server.url, timeout=60) as client:
            declare(client, "cut/whole", files)
        url = urlparse(server.url)
        head = (
            f"PUT /v1/models/cut/whole/versions/1/files/model.safetensors HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        with socket.create_connection((url.hostname, url.port)) as raw:
            raw.sendall(head + data[: len(data) // 2])
            time.sleep(0.5)  # the server has spooled what arrived
        scratch = [p for p in (tmp_path / "home").rglob("upload-*") if p.is_file()]
        deadline = time.monotonic() + 10
        while scratch and time.monotonic() < deadline:
            time.sleep(0.1)
            scratch = [p for p in (tmp_path / "home").rglob("upload-*") if p.is_file()]
        assert scratch == []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            r = client.put("/v1/models/cut/whole/versions/1/files/model.safetensors", content=data)
            assert r.status_code == 200, r.text
        assert server.problems() == []
    finally:
        server.stop()


def send_in_parts(client: httpx.Client, url: str, data: bytes) -> None:
    """A whole file declared without sha256, in parts; the last one names it."""
    for start in range(0, len(data), PART):
        end = min(len(data), start + PART)
        headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}
        if end == len(data):
            headers["Deltazoo-Sha256"] = sha(data)
        assert client.put(url, content=data[start:end], headers=headers).status_code in (200, 202)


@pytest.mark.parametrize("changed", [False, True])
def test_a_resumed_push_takes_a_large_file_held_whole_without_sending_it(
    embedded_server: str, unique_org: str, tmp_path: Path, changed: bool
) -> None:
    """A push cut off after one large file (declared without sha256) arrived whole: run again, it names
    that file's sha256, hashed locally, and the server takes the bytes it holds (nothing sent twice).
    When the local file changed meanwhile (same path and size), the held bytes differ: it is sent."""
    ckpt = {"a.safetensors": big_checkpoint(seed=8)["model.safetensors"]}
    ckpt["b.safetensors"] = big_checkpoint(seed=9)["model.safetensors"]
    held = big_checkpoint(seed=10)["model.safetensors"] if changed else ckpt["a.safetensors"]
    model = f"{unique_org}/held"
    with httpx.Client(base_url=embedded_server, timeout=60) as client:
        assert client.post("/v1/models", json={"name": model}).status_code == 201
        declared = [{"path": p, "size": len(d), "sha256": None} for p, d in ckpt.items()]
        assert (
            client.post(f"/v1/models/{model}/versions", json={"files": declared, "resume": True}).status_code
            == 201
        )
        send_in_parts(client, f"/v1/models/{model}/versions/1/files/a.safetensors", held)
    with Client(embedded_server, cache_dir=tmp_path / "cache") as client:
        client.upload_part_bytes = PART
        client.push(write_dir(tmp_path / "ckpt", ckpt), model, quiet=True)
        assert client.last_push_resumed
        sent = len(ckpt["b.safetensors"]) + (len(ckpt["a.safetensors"]) if changed else 0)
        assert client.transport.bytes_uploaded == sent
        pulled = client.pull(model, tmp_path / "pulled", quiet=True)
    assert {p: sha((pulled / p).read_bytes()) for p in ckpt} == {p: sha(d) for p, d in ckpt.items()}
