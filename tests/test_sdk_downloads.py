"""The SDK's one downloader (``deltazoo.download``) under every download path: a whole file of a pull, a
packed profile (``fetch_delta_file``) and the stored blob of a non-tensor file in a delta-only pull each
resume an interrupted download with ``Range`` and refuse wrong bytes. The first tests drive the
downloader alone over an in-process HTTP transport that drops connections; the rest run against a real
embedded server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deltazoo import Client, IntegrityError
from deltazoo.download import download, incomplete_path
from deltazoo.models import Ref
from deltazoo.transport import Transport
from tests.checkpoints import file_sha256, finetune_of, make_checkpoint, random_tensors

DATA = bytes(range(256)) * 12_800  # 3,276,800 bytes: the SDK writes each piece as it arrives
MIB = 1 << 20
SHA = hashlib.sha256(DATA).hexdigest()


class _Dropping(httpx.SyncByteStream):
    """A body that sends ``upto`` bytes of ``data`` and then loses the connection."""

    def __init__(self, data: bytes, upto: int | None) -> None:
        self.data, self.upto = data, upto

    def __iter__(self) -> Iterator[bytes]:
        sent = self.data if self.upto is None else self.data[: self.upto]
        for i in range(0, len(sent), 4096):
            yield sent[i : i + 4096]
        if self.upto is not None:
            raise httpx.ReadError("connection reset by peer")


def _server(data: bytes, *, drops: list[int], etag: str | None = None) -> tuple[Transport, list[str | None]]:
    """A Transport to a server of ``data`` that honours Range; its n-th answer drops after ``drops[n]``
    bytes of its body (while the list lasts). Returns the transport and the Range header of each ask."""
    ranges: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        ranges.append(wanted)
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted else 0
        body = data[start:]
        headers = {"Content-Length": str(len(body))}
        if etag:
            headers["ETag"] = f'"{etag}"'
        if wanted:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        upto = drops.pop(0) if drops else None
        return httpx.Response(206 if wanted else 200, headers=headers, stream=_Dropping(body, upto))

    return Transport(
        "http://dz.test", max_retries=0, backoff=0.0, transport=httpx.MockTransport(answer)
    ), ranges


def test_a_dropped_connection_is_resumed_from_the_byte_it_stopped_at(tmp_path: Path) -> None:
    transport, ranges = _server(DATA, drops=[MIB + 400_000, MIB + 100_000])
    target = download(transport, "/f", tmp_path / "f.bin", size=len(DATA), sha256=SHA)
    assert target.read_bytes() == DATA and not incomplete_path(target).exists()
    # each try goes on from the very byte where the last stopped
    assert ranges == [None, f"bytes={MIB + 400_000}-", f"bytes={2 * MIB + 500_000}-"]
    assert transport.bytes_downloaded == len(DATA)  # no byte sent twice
    assert target.stat().st_mode & 0o222 == 0  # read-only: the cache links it into place


def test_a_part_left_by_an_earlier_process_is_resumed(tmp_path: Path) -> None:
    transport, ranges = _server(DATA, drops=[])
    target = tmp_path / "f.bin"
    incomplete_path(target).write_bytes(DATA[:1000])
    download(transport, "/f", target, size=len(DATA), sha256=SHA)
    assert target.read_bytes() == DATA and ranges == ["bytes=1000-"]
    assert transport.bytes_downloaded == len(DATA) - 1000


def test_wrong_bytes_are_refused_and_removed(tmp_path: Path) -> None:
    transport, _ = _server(DATA, drops=[])
    target = tmp_path / "f.bin"
    incomplete_path(target).write_bytes(b"\0" * 1000)  # not a prefix of the file
    with pytest.raises(IntegrityError, match="expected") as info:
        download(transport, "/f", target, size=len(DATA), sha256=SHA)
    assert info.value.code == "sha256_mismatch"
    assert not target.exists() and not incomplete_path(target).exists()
    download(transport, "/f", target, size=len(DATA), sha256=SHA)  # the next try starts afresh
    assert target.read_bytes() == DATA


def test_a_download_checked_here_tells_the_server_so(tmp_path: Path) -> None:
    """With its sha256 given (every file of a pull), each try, resumed ones too, says
    ``Deltazoo-Client-Verifies: sha256`` (the server then does not hash the file as well); without one
    (only the server's ETag to go by) it does not."""
    said: list[str | None] = []
    transport, _ = _server(DATA, drops=[MIB])
    original = transport.http.send

    def send(request: httpx.Request, **kwargs: object) -> httpx.Response:
        said.append(request.headers.get("deltazoo-client-verifies"))
        return original(request, **kwargs)  # type: ignore[arg-type]

    transport.http.send = send  # type: ignore[method-assign]
    download(transport, "/f", tmp_path / "f.bin", size=len(DATA), sha256=SHA)
    assert said == ["sha256", "sha256"]  # the first try and the resumed one
    said.clear()
    download(transport, "/f", tmp_path / "g.bin", size=len(DATA))
    assert said == [None]


def test_a_short_body_is_refused_by_its_size(tmp_path: Path) -> None:
    transport, _ = _server(DATA[:-10], drops=[])
    with pytest.raises(IntegrityError, match="expected") as info:
        download(transport, "/f", tmp_path / "f.bin", size=len(DATA), sha256=SHA)
    assert info.value.code == "size_mismatch" and not (tmp_path / "f.bin").exists()


def test_without_a_known_sha256_the_servers_etag_is_checked(tmp_path: Path) -> None:
    transport, _ = _server(DATA, drops=[MIB + 5000], etag=hashlib.sha256(b"other bytes").hexdigest())
    with pytest.raises(IntegrityError) as info:
        download(transport, "/f", tmp_path / "f.bin")  # size from Content-Length, sha256 from the ETag
    assert info.value.code == "sha256_mismatch" and not (tmp_path / "f.bin").exists()
    transport, ranges = _server(DATA, drops=[MIB + 5000], etag=SHA)
    assert download(transport, "/f", tmp_path / "f.bin").read_bytes() == DATA
    assert ranges == [None, f"bytes={MIB + 5000}-"]


# --- every download path of the SDK, against a real server ------------------------------------------


def test_a_packed_profile_download_resumes_and_refuses_wrong_bytes(
    embedded_server: str, unique_org: str, tmp_path: Path
) -> None:
    profile = "deltadq:n=1,m=32,bits=4"
    base_t = random_tensors({"a.weight": (64, 64), "b.weight": (64, 32)}, seed=5)
    base_dir = make_checkpoint(tmp_path / "base", base_t, {"model_type": "toy"})
    tuned_dir = make_checkpoint(
        tmp_path / "tuned", finetune_of(base_t, seed=6, unchanged=""), {"model_type": "toy"}
    )
    with Client(embedded_server, cache_dir=tmp_path / "c0") as c:
        base = c.push(base_dir, f"{unique_org}/pb", quiet=True)
        tuned = c.push(tuned_dir, f"{unique_org}/pt", base=base.ref, profiles=[profile], quiet=True)
        whole = c.fetch_delta_file(tuned.ref, profile).read_bytes()
    keep = len(whole) // 3
    with Client(embedded_server, cache_dir=tmp_path / "c1") as c:
        target = c.cache.artifact_path(Ref.parse(tuned.ref), profile)
        incomplete_path(target).parent.mkdir(parents=True)
        incomplete_path(target).write_bytes(whole[:keep])
        assert c.fetch_delta_file(tuned.ref, profile).read_bytes() == whole
        assert c.bytes_downloaded == len(whole) - keep  # only the missing tail travelled
    with Client(embedded_server, cache_dir=tmp_path / "c2") as c:
        target = c.cache.artifact_path(Ref.parse(tuned.ref), profile)
        incomplete_path(target).parent.mkdir(parents=True)
        incomplete_path(target).write_bytes(b"\0" * keep)  # not a prefix of the container
        with pytest.raises(IntegrityError) as info:
            c.fetch_delta_file(tuned.ref, profile)
        assert info.value.code == "sha256_mismatch"
        assert not target.exists() and not incomplete_path(target).exists()
        assert c.fetch_delta_file(tuned.ref, profile).read_bytes() == whole


def test_a_delta_pulls_non_tensor_file_resumes_and_refuses_wrong_bytes(
    embedded_server: str, unique_org: str, tmp_path: Path
) -> None:
    base_t = random_tensors({"a.weight": (64, 64)}, seed=7)
    base_dir = make_checkpoint(tmp_path / "base", base_t, {"model_type": "toy"})
    tuned_dir = make_checkpoint(
        tmp_path / "tuned", finetune_of(base_t, seed=8, unchanged=""), {"model_type": "toy"}
    )
    vocab = {f"token{i}": i for i in range(4000)}  # a tokenizer the fine-tune changed: not in the base
    (tuned_dir / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    with Client(embedded_server, cache_dir=tmp_path / "pusher") as c:
        base = c.push(base_dir, f"{unique_org}/db", quiet=True)
        tuned = c.push(tuned_dir, f"{unique_org}/dt", base=base.ref, quiet=True)
        path = f"/v1/models/{unique_org}/dt/versions/{tuned.revision}/manifest"
        entry = next(f for f in c.transport.json("GET", path)["files"] if f["path"] == "tokenizer.json")
        stored = c.transport.get_bytes(f"/v1/blobs/{entry['blob']}")
    assert hashlib.sha256(stored).hexdigest() == entry["blob"]

    def pull(cache: Path, part: bytes | None) -> int:
        with Client(embedded_server, cache_dir=cache) as c:
            c.pull(base.ref, quiet=True)  # the base cached: the fine-tune travels as deltas
            before = c.bytes_downloaded
            if part is not None:
                incomplete_path(c.cache.root / "blobs" / f"{entry['blob']}.stored").write_bytes(part)
            out = c.pull(tuned.ref, tmp_path / cache.name, quiet=True)
            assert file_sha256(out / "tokenizer.json") == file_sha256(tuned_dir / "tokenizer.json")
            assert file_sha256(out / "model.safetensors") == file_sha256(tuned_dir / "model.safetensors")
            return c.bytes_downloaded - before

    keep = len(stored) // 2
    assert pull(tmp_path / "fresh", None) - pull(tmp_path / "resumed", stored[:keep]) == keep
    with Client(embedded_server, cache_dir=tmp_path / "bad") as c:
        c.pull(base.ref, quiet=True)
        part = incomplete_path(c.cache.root / "blobs" / f"{entry['blob']}.stored")
        part.write_bytes(b"\0" * keep)
        with pytest.raises(IntegrityError) as info:
            c.pull(tuned.ref, quiet=True)
        assert info.value.code == "sha256_mismatch" and not part.exists()
        out = c.pull(tuned.ref, tmp_path / "bad-out", quiet=True)
        assert file_sha256(out / "tokenizer.json") == file_sha256(tuned_dir / "tokenizer.json")
