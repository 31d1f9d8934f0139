"""Blobs of a delta-only pull (``deltazoo.blob_fetch``) against a real embedded server storing tensors in
1 MiB chunks: one connection per thread read with ``readinto``, several blobs per request, a stale
connection replaced, and every other answer going through ``Transport.get_bytes`` (same errors, same
retries). The delta-only pull of a chunked fine-tune is exact whichever way its blobs arrive."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from deltazoo import Client, NotFoundError, blob_fetch
from deltazoo.blob_fetch import BlobFetcher
from deltazoo.transport import Transport
from tests.checkpoints import file_sha256, finetune_of, make_checkpoint, random_tensors
from tests.servers import start_api_server

# bf16: "big" is 4 chunks of 1 MiB, "mid" 2, "norm" one small tensor (not chunked)
SHAPES = {"big.weight": (1024, 2048), "mid.weight": (1024, 1024), "norm.weight": (1024,)}


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path, list[str]]]:
    """A server (1 MiB chunks) holding a base and its fine-tune; yields its URL, the two checkpoints and
    the fine-tune's chunk blobs in file order."""
    root = tmp_path_factory.mktemp("chunked")
    server = start_api_server(root / "home", {"DELTAZOO_TENSOR_CHUNK_MB": "1"})
    try:
        base_t = random_tensors(SHAPES, seed=11)
        base_dir = make_checkpoint(root / "base", base_t)
        tuned_dir = make_checkpoint(root / "tuned", finetune_of(base_t, seed=12, unchanged="norm.weight"))
        with Client(server.url, cache_dir=root / "pusher") as c:
            base = c.push(base_dir, "chunky/base", quiet=True)
            c.push(tuned_dir, "chunky/tuned", base=base.ref, quiet=True)
            manifest = c.transport.json("GET", "/v1/models/chunky/tuned/versions/1/manifest")
        weights = next(f for f in manifest["files"] if f["path"] == "model.safetensors")
        tensors = sorted(weights["tensors"], key=lambda t: t["offset"][0])
        blobs = [c["blob"] for t in tensors for c in t.get("chunks") or ()]
        assert len(blobs) == 6, blobs  # the test is about chunks: the server must have made them
        yield server.url, base_dir, tuned_dir, blobs
    finally:
        server.stop()


def test_blobs_come_whole_and_counted_one_by_one_or_several_at_once(chunked) -> None:
    url, _, _, blobs = chunked
    transport = Transport(url)
    fetcher = BlobFetcher(transport)
    try:
        assert fetcher.direct and fetcher.batches
        expected = [transport.get_bytes(f"/v1/blobs/{b}") for b in blobs]
        counted = transport.bytes_downloaded
        assert [bytes(fetcher.fetch(b)) for b in blobs] == expected
        assert bytes(fetcher.fetch_scratch(blobs[1])) == expected[1]
        fetched = fetcher.fetch_many(blobs[:4])
        assert [bytes(p) for p in fetched.parts] == expected[:4] and fetched.buffer is not None
        assert all(hashlib.sha256(p).hexdigest() == b for p, b in zip(expected, blobs, strict=True))
        sent = sum(map(len, expected))
        assert transport.bytes_downloaded - counted == sent + len(expected[1]) + sum(map(len, expected[:4]))
        buffer = fetched.buffer
        fetcher.give_back(fetched)
        again = fetcher.fetch_many(blobs[2:4])  # the buffer given back serves the next batch
        assert again.buffer is buffer and [bytes(p) for p in again.parts] == expected[2:4]
    finally:
        fetcher.close()
        transport.close()


def test_requests_carry_the_token_and_ask_for_the_bytes_as_stored() -> None:
    transport = Transport("http://dz.test:8080", token="secret")
    fetcher = BlobFetcher(transport)
    assert fetcher.direct and fetcher._headers["authorization"] == "Bearer secret"
    assert fetcher._headers["accept-encoding"] == "identity"
    assert fetcher._headers["user-agent"] == "deltazoo-sdk"
    assert not BlobFetcher(Transport("https://dz.test")).direct  # https: through httpx
    transport.close()


def test_a_connection_closed_under_a_thread_is_replaced(chunked, monkeypatch: pytest.MonkeyPatch) -> None:
    url, _, _, blobs = chunked
    transport = Transport(url)
    fetcher = BlobFetcher(transport)
    try:
        first = bytes(fetcher.fetch(blobs[0]))

        def not_here(path: str) -> bytes:
            raise AssertionError(f"{path} went through httpx: the closed connection was not replaced")

        monkeypatch.setattr(transport, "get_bytes", not_here)
        for fetch in (fetcher.fetch, lambda b: fetcher.fetch_many([b, b]).parts[1]):
            closed = fetcher._local.connection
            closed.sock.shutdown(socket.SHUT_RDWR)  # as a server closes an idle keep-alive connection
            assert bytes(fetch(blobs[0])) == first
            assert fetcher._local.connection is not closed
        assert fetcher.batches
    finally:
        fetcher.close()
        transport.close()


def test_a_blob_the_server_refuses_reads_as_it_does_over_httpx(chunked) -> None:
    url, _, _, blobs = chunked
    transport = Transport(url, max_retries=0)
    fetcher = BlobFetcher(transport)
    missing = "0" * 64
    try:
        with pytest.raises(NotFoundError) as one:
            fetcher.fetch(missing)
        with pytest.raises(NotFoundError) as many:
            fetcher.fetch_many([blobs[0], missing])
        assert one.value.code == many.value.code == "blob_not_found"
        assert not fetcher.batches  # each blob alone from then on, through the SDK's one HTTP path
        assert [bytes(p) for p in fetcher.fetch_many(blobs[:2]).parts] == [
            transport.get_bytes(f"/v1/blobs/{b}") for b in blobs[:2]
        ]
    finally:
        fetcher.close()
        transport.close()


@pytest.mark.parametrize("direct", [True, False], ids=["own-connections", "httpx"])
def test_a_delta_only_pull_of_chunked_tensors_is_exact(
    chunked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    url, base_dir, tuned_dir, blobs = chunked
    asked: list[list[str]] = []
    original = BlobFetcher.fetch_many

    def recording(self: BlobFetcher, names: list[str]) -> blob_fetch.Fetched:
        asked.append(list(names))
        return original(self, names)

    monkeypatch.setattr(BlobFetcher, "fetch_many", recording)
    if not direct:
        monkeypatch.setattr(blob_fetch, "_direct", lambda transport: False)
    cache = tmp_path / "cache"
    with Client(url, cache_dir=cache) as c:
        c.pull("chunky/base@1", quiet=True)
    with Client(url, cache_dir=cache) as c:
        out = c.pull("chunky/tuned@1", tmp_path / "out", quiet=True)
        stored = sum(len(c.transport.get_bytes(f"/v1/blobs/{b}")) for b in blobs)
        got = c.bytes_downloaded - stored
    assert file_sha256(out / "model.safetensors") == file_sha256(tuned_dir / "model.safetensors")
    assert got <= stored * 1.05, (got, stored)  # the blobs once (plus the header and the norm tensor)
    assert asked == ([blobs[:4], blobs[4:]] if direct else [])
